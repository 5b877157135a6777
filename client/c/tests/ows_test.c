/* Streams N frames of a known pattern through the C library; even frames with ows_append,
 * odd ones with ows_claim/ows_commit. Pixel (y, x) of frame i is (i*7 + y*3 + x) & 0xFFFF.
 * Frames i % 5 == 0 carry {"delta_t": i * 0.1}; frames i % 5 == 3 pass "" (no metadata, as
 * LabVIEW passes an unwired string). PAUSE_S (optional): sleep that long after half the
 * frames — longer than the daemon's heartbeat timeout, it shows a client in another pid
 * namespace stays alive through its heartbeats. PAUSE_S "kill": SIGKILL this process right
 * after the last frame returned (before its notices can leave): the daemon must still write
 * every frame, from the ring.
 *
 *     ows_test ENDPOINT TOKEN SETTINGS.json shm|inline N HEIGHT WIDTH [PAUSE_S|kill]
 *
 * ENDPOINT "@FILE" opens the stream from the connection file FILE (ows_open_connection_file,
 * with its CURVE keys if the daemon encrypts); TOKEN is then ignored.
 */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
    if (argc != 8 && argc != 9) {
        fprintf(stderr, "usage: %s ENDPOINT TOKEN SETTINGS.json shm|inline N HEIGHT WIDTH "
                "[PAUSE_S]\n", argv[0]);
        return 2;
    }
    char *settings = slurp(argv[3]);
    if (!settings) return 2;
    int transport = strcmp(argv[4], "inline") ? OWS_TRANSPORT_SHM : OWS_TRANSPORT_INLINE;
    int n = atoi(argv[5]), h = atoi(argv[6]), w = atoi(argv[7]);
    int kill_after = argc == 9 && !strcmp(argv[8], "kill");
    double pause_s = argc == 9 && !kill_after ? atof(argv[8]) : 0;
    char err[1024];
    ows_stream *s = NULL;
    if (argv[1][0] == '@')
        ows_open_connection_file(argv[1] + 1, NULL, settings, transport, &s, err, sizeof err);
    else
        s = ows_open(argv[1], argv[2], settings, transport, err, sizeof err);
    free(settings);
    if (!s) {
        fprintf(stderr, "open failed: %s\n", err);
        return 1;
    }
    size_t nbytes = (size_t)h * (size_t)w * 2;
    if (ows_frame_nbytes(s) != nbytes) {
        fprintf(stderr, "frame size %zu != %zu\n", ows_frame_nbytes(s), nbytes);
        ows_close(s, NULL, 0);
        return 1;
    }
    uint16_t *buf = malloc(nbytes);
    if (!buf) return 1;
    for (int i = 0; i < n; i++) {
        int rc;
        char meta[64];
        snprintf(meta, sizeof meta, "{\"delta_t\": %.3f}", i * 0.1);
        const char *m = i % 5 == 0 ? meta : i % 5 == 3 ? "" : NULL;
        if (pause_s > 0 && i == n / 2) {
            const time_t whole = (time_t)pause_s;
            struct timespec t = {whole, (long)((pause_s - (double)whole) * 1e9)};
            nanosleep(&t, NULL);
        }
        if (i % 2 == 0) {
            fill(buf, i, h, w);
            rc = ows_append(s, buf, nbytes, m);
            memset(buf, 0xAB, nbytes); /* the buffer is free again at once */
        } else {
            void *slot;
            rc = ows_claim(s, &slot);
            if (rc == OWS_OK) {
                fill(slot, i, h, w);
                rc = ows_commit(s, m);
            }
        }
        if (rc != OWS_OK) {
            fprintf(stderr, "frame %d: %d %s\n", i, rc, ows_last_error(s));
            ows_close(s, NULL, 0);
            free(buf);
            return 1;
        }
    }
    if (kill_after) raise(SIGKILL);
    char status[4096];
    if (ows_status(s, status, sizeof status) != OWS_OK || !strstr(status, "\"frames_received\"")) {
        fprintf(stderr, "status: %s %s\n", ows_last_error(s), status);
        ows_close(s, NULL, 0);
        free(buf);
        return 1;
    }
    char report[8192];
    int rc = ows_close(s, report, sizeof report);
    free(buf);
    printf("%s\n", report);
    return rc == OWS_OK ? 0 : 1;
}
