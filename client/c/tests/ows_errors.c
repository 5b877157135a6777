/* The C library's error paths against a real daemon: wrong token, wrong frame size, too many
 * frames, and the daemon gone (the test kills it after this prints READY).
 *
 *     ows_errors ENDPOINT TOKEN SETTINGS.json
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../ows_client.h"

#define CHECK(cond, ...)                      \
    do {                                      \
        if (!(cond)) {                        \
            fprintf(stderr, __VA_ARGS__);     \
            fprintf(stderr, "\n");            \
            return 1;                         \
        }                                     \
    } while (0)

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    CHECK(argc == 4, "usage: ows_errors ENDPOINT TOKEN SETTINGS.json");
    FILE *f = fopen(argv[3], "rb");
    CHECK(f, "cannot read %s", argv[3]);
    char settings[8192];
    size_t n = fread(settings, 1, sizeof settings - 1, f);
    settings[n] = 0;
    fclose(f);
    char err[1024];

    ows_stream *s = ows_open(argv[1], "not-the-token", settings, OWS_TRANSPORT_SHM, err, sizeof err);
    CHECK(!s, "open with a wrong token succeeded");
    CHECK(strstr(err, "token"), "wrong-token error does not say so: %s", err);
    printf("wrong token: %s\n", err);

    CHECK(!ows_open(argv[1], argv[2], "{not json", OWS_TRANSPORT_SHM, err, sizeof err),
          "bad settings JSON accepted");

    s = ows_open(argv[1], argv[2], settings, OWS_TRANSPORT_SHM, err, sizeof err);
    CHECK(s, "open failed: %s", err);
    size_t nbytes = ows_frame_nbytes(s);
    char *frame = calloc(1, nbytes + 16);
    int rc = ows_append(s, frame, nbytes + 2, NULL);
    CHECK(rc == OWS_ERR_FRAME_SIZE, "wrong size gave %d", rc);
    CHECK(strstr(ows_last_error(s), "frame 0"), "message does not name the frame: %s",
          ows_last_error(s));
    printf("wrong size: %s\n", ows_last_error(s));
    CHECK(ows_append(s, frame, nbytes, "[1, 2]") == OWS_ERR_ARG, "array metadata accepted");
    CHECK(ows_append(s, frame, nbytes, NULL) == OWS_OK, "append: %s", ows_last_error(s));
    CHECK(ows_frames_sent(s) == 1, "frames_sent %lld", (long long)ows_frames_sent(s));

    printf("READY\n");
    fflush(stdout);
    char line[16];
    CHECK(fgets(line, sizeof line, stdin), "no go-ahead");  /* the daemon is killed now */
    double t0 = now();
    for (;;) {
        rc = ows_append(s, frame, nbytes, NULL);
        if (rc == OWS_ERR_DAEMON_GONE) break;
        CHECK(rc == OWS_OK || rc == OWS_ERR_TOO_MANY, "append after kill: %d %s", rc,
              ows_last_error(s));
        CHECK(now() - t0 < 3.0, "daemon death not noticed within 3 s");
        struct timespec pause = {0, 20 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    printf("GONE after %.2f s: %s\n", now() - t0, ows_last_error(s));
    char report[1024];
    rc = ows_close(s, report, sizeof report);
    CHECK(rc == OWS_ERR_DAEMON_GONE, "close after kill gave %d", rc);
    free(frame);
    return 0;
}
