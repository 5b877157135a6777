/* Streams N frames of a known pattern through the C library; even frames with ows_append,
 * odd ones with ows_claim/ows_commit. Pixel (y, x) of frame i is (i*7 + y*3 + x) & 0xFFFF.
 *
 *     ows_test ENDPOINT TOKEN SETTINGS.json shm|inline N HEIGHT WIDTH
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../ows_client.h"

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    if (buf) buf[n] = 0;
    fclose(f);
    return buf;
}

static void fill(uint16_t *px, int i, int h, int w) {
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) px[y * w + x] = (uint16_t)((i * 7 + y * 3 + x) & 0xFFFF);
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: %s ENDPOINT TOKEN SETTINGS.json shm|inline N HEIGHT WIDTH\n", argv[0]);
        return 2;
    }
    char *settings = slurp(argv[3]);
    if (!settings) return 2;
    int transport = strcmp(argv[4], "inline") ? OWS_TRANSPORT_SHM : OWS_TRANSPORT_INLINE;
    int n = atoi(argv[5]), h = atoi(argv[6]), w = atoi(argv[7]);
    char err[1024];
    ows_stream *s = ows_open(argv[1], argv[2], settings, transport, err, sizeof err);
    free(settings);
    if (!s) {
        fprintf(stderr, "open failed: %s\n", err);
        return 1;
    }
    size_t nbytes = (size_t)h * (size_t)w * 2;
    if (ows_frame_nbytes(s) != nbytes) {
        fprintf(stderr, "frame size %zu != %zu\n", ows_frame_nbytes(s), nbytes);
        return 1;
    }
    uint16_t *buf = malloc(nbytes);
    for (int i = 0; i < n; i++) {
        int rc;
        char meta[64];
        snprintf(meta, sizeof meta, "{\"delta_t\": %.3f}", i * 0.1);
        if (i % 2 == 0) {
            fill(buf, i, h, w);
            rc = ows_append(s, buf, nbytes, i % 5 == 0 ? meta : NULL);
            memset(buf, 0xAB, nbytes); /* the buffer is free again at once */
        } else {
            void *slot;
            rc = ows_claim(s, &slot);
            if (rc == OWS_OK) {
                fill(slot, i, h, w);
                rc = ows_commit(s, i % 5 == 0 ? meta : NULL);
            }
        }
        if (rc != OWS_OK) {
            fprintf(stderr, "frame %d: %d %s\n", i, rc, ows_last_error(s));
            return 1;
        }
    }
    char status[4096];
    if (ows_status(s, status, sizeof status) != OWS_OK) {
        fprintf(stderr, "status: %s\n", ows_last_error(s));
        return 1;
    }
    char report[8192];
    int rc = ows_close(s, report, sizeof report);
    free(buf);
    printf("%s\n", report);
    return rc == OWS_OK ? 0 : 1;
}
