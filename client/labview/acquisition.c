/*
 * The acquisition of client/labview/README.md ("A complete acquisition") as C: the same
 * calls of the C library, in the same order, with the same case on every return code — what
 * the VI's Call Library Function Nodes do. tests/test_c_client.py builds and runs it against
 * a real daemon, so the guide's steps are known to work.
 *
 *   acquisition ENDPOINT TOKEN ROOT_PATH FRAMES PAUSE_S BAD_FRAME
 *
 * Streams FRAMES 64x64 uint16 frames (transport inline, as LabVIEW on Windows), waiting
 * PAUSE_S seconds between frames (a slow time-lapse), with unusable metadata on frame
 * BAD_FRAME (-1: none), and prints what the VI would show: warnings, then the final report.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ows_client.h"

#define ROWS 64
#define COLS 64

static void pause_s(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: acquisition ENDPOINT TOKEN ROOT_PATH FRAMES PAUSE_S BAD_FRAME\n");
        return 2;
    }
    const long frames = atol(argv[4]), bad = atol(argv[6]);
    const double pause = atof(argv[5]);
    char settings[1024], err[1024], meta[256], report[16384];
    snprintf(settings, sizeof settings,
             "{\"root_path\": \"%s\", \"dtype\": \"uint16\", \"dimensions\": ["
             "{\"name\": \"t\", \"count\": %ld}, {\"name\": \"y\", \"count\": %d}, "
             "{\"name\": \"x\", \"count\": %d}]}", argv[3], frames, ROWS, COLS);

    /* 1. connect and open: a negative code stops here, err is the daemon's text */
    ows_stream *s = NULL;
    int rc = ows_open_ex(argv[1], argv[2], settings, OWS_TRANSPORT_INLINE, &s, err, sizeof err);
    if (rc != OWS_OK) {
        printf("open failed (%d): %s\n", rc, err);
        return 1;
    }
    printf("open: protocol 1.%d\n", ows_daemon_minor(s));

    /* 2. the acquisition loop: a case on every return code */
    static uint16_t image[ROWS][COLS];
    int failed = 0;
    for (long i = 0; i < frames && !failed; i++) {
        for (int y = 0; y < ROWS; y++)
            for (int x = 0; x < COLS; x++) image[y][x] = (uint16_t)(i * 7 + y * 3 + x);
        if (i == bad) /* a string where the daemon stores a number */
            snprintf(meta, sizeof meta, "{\"delta_t\": \"soon\"}");
        else
            snprintf(meta, sizeof meta, "{\"delta_t\": %.3f, \"exposure_time\": 0.01}",
                     (double)i * pause);
        rc = ows_append(s, image, sizeof image, meta);
        switch (rc) {
        case OWS_OK: break;
        case OWS_DROPPED: printf("frame %ld dropped\n", i); break;
        case OWS_REFUSED: /* an earlier frame is a gap; this one was sent: go on */
            printf("warning: %s\n", ows_last_error(s));
            break;
        default: /* stop the loop, keep the message for the error cluster */
            printf("append failed (%d): %s\n", rc, ows_last_error(s));
            failed = 1;
        }
        /* 3. liveness needs nothing here: the library keeps the stream alive while we wait */
        if (i + 1 < frames) pause_s(pause);
    }

    /* 4. progress */
    char status[4096];
    if (!failed && ows_status(s, status, sizeof status) == OWS_OK)
        printf("status: %s\n", status);

    /* 5. close, always: it frees the stream whatever it returns */
    rc = ows_close(s, report, sizeof report);
    printf("close (%d): %s\n", rc, report);
    return rc == OWS_OK ? 0 : 1;
}
