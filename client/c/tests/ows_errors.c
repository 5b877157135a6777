/* The C library's error paths against a real daemon: wrong token, invalid settings (the
 * daemon's message), bad arguments, wrong frame size, claim/commit misuse, too many frames,
 * and the daemon gone: after this prints READY the test kills (or stops) the daemon and
 * writes a line; every call must then fail with OWS_ERR_DAEMON_GONE within LIMIT_S seconds
 * (default 3) instead of blocking — including ows_status and ows_close.
 *
 *     ows_errors ENDPOINT TOKEN SETTINGS.json [LIMIT_S]
 *
 * SETTINGS must declare 100 frames of 32x32 uint16.
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

static int run(const char *endpoint, const char *token, const char *settings, double limit,
               char *frame) {
    char err[1024];
    ows_stream *s = NULL;

    int rc = ows_open_ex(endpoint, "not-the-token", settings, OWS_TRANSPORT_SHM, &s, err,
                         sizeof err);
    CHECK(rc == OWS_ERR_DAEMON && !s, "open with a wrong token gave %d", rc);
    CHECK(strstr(err, "token") && strstr(err, "(unauthorized)"), "wrong-token error: %s", err);
    printf("wrong token: %s\n", err);
    CHECK(!ows_open(endpoint, "not-the-token", settings, OWS_TRANSPORT_SHM, NULL, 0),
          "open with a wrong token (err NULL) succeeded");

    rc = ows_open_ex(endpoint, token, "{not json", OWS_TRANSPORT_SHM, &s, err, sizeof err);
    CHECK(rc == OWS_ERR_ARG && !s, "bad settings JSON gave %d", rc);
    rc = ows_open_ex(endpoint, token, settings, 7, &s, err, sizeof err);
    CHECK(rc == OWS_ERR_ARG && strstr(err, "transport"), "transport 7 gave %d: %s", rc, err);
    rc = ows_open_ex(endpoint, token, "{\"root_path\": \"/tmp/x.ome.zarr\", \"dtype\": \"uint16\","
                     " \"dimensions\": [{\"name\": \"y\", \"count\": 0}]}", OWS_TRANSPORT_SHM,
                     &s, err, sizeof err);
    CHECK(rc == OWS_ERR_DAEMON && strstr(err, "(invalid_settings)"), "invalid settings gave %d: %s",
          rc, err);
    printf("invalid settings: %s\n", err);

    /* metadata the daemon refuses (protocol 1.1): the next frame call that succeeds says so
     * once (OWS_REFUSED), the stream goes on with its slot back, close reports it */
    rc = ows_open_ex(endpoint, token, settings, OWS_TRANSPORT_INLINE, &s, err, sizeof err);
    CHECK(rc == OWS_OK && s, "open failed: %d %s", rc, err);
    CHECK(ows_daemon_minor(s) == 1, "daemon minor %d", ows_daemon_minor(s));
    CHECK(ows_append(s, frame, 2048, "{\"delta_t\": 0.5}") == OWS_OK, "%s", ows_last_error(s));
    CHECK(ows_append(s, frame, 2048, "{\"delta_t\": \"soon\"}") == OWS_OK, "%s", ows_last_error(s));
    char report[4096];
    CHECK(ows_status(s, report, sizeof report) == OWS_OK, "status: %s", ows_last_error(s));
    rc = ows_append(s, frame, 2048, NULL); /* the refusal came before the status reply */
    CHECK(rc == OWS_REFUSED && strstr(ows_last_error(s), "frame 1:") &&
          strstr(ows_last_error(s), "(malformed)") && ows_frames_refused(s) == 1,
          "append after a refused frame: %d %s", rc, ows_last_error(s));
    printf("refused frame: %s\n", ows_last_error(s));
    CHECK(ows_append(s, frame, 2048, NULL) == OWS_OK, "reported twice: %s", ows_last_error(s));
    rc = ows_close(s, report, sizeof report);
    CHECK(rc == OWS_ERR_DAEMON && strstr(report, "\"frames_written\":3") &&
          strstr(report, "\"frames_refused\":1") &&
          strstr(report, "\"type\":\"closed\"") && strstr(report, "\"error\":\"daemon: frame 1:") &&
          strstr(report, "delta_t"), "close after refused metadata: %d %s", rc, report);
    printf("refused metadata: %s\n", strstr(report, "\"error\""));

    rc = ows_open_ex(endpoint, token, settings, OWS_TRANSPORT_SHM, &s, err, sizeof err);
    CHECK(rc == OWS_OK && s, "open failed: %d %s", rc, err);
    size_t nbytes = ows_frame_nbytes(s);
    CHECK(nbytes == 2048, "frame size %zu", nbytes);
    rc = ows_append(s, frame, nbytes + 2, NULL);
    CHECK(rc == OWS_ERR_FRAME_SIZE, "wrong size gave %d", rc);
    CHECK(strstr(ows_last_error(s), "frame 0"), "message does not name the frame: %s",
          ows_last_error(s));
    printf("wrong size: %s\n", ows_last_error(s));
    CHECK(ows_append(s, NULL, nbytes, NULL) == OWS_ERR_ARG, "NULL frame accepted");
    CHECK(ows_append(s, frame, nbytes, "[1, 2]") == OWS_ERR_ARG, "array metadata accepted");
    { /* metadata over the limit: refused at once, naming the frame; no slot is lost */
        size_t big = 1100000;
        char *huge = malloc(big + 16);
        CHECK(huge != NULL, "out of memory");
        memcpy(huge, "{\"blob\": \"", 10);
        memset(huge + 10, 'x', big);
        memcpy(huge + 10 + big, "\"}", 3);
        rc = ows_append(s, frame, nbytes, huge);
        free(huge);
        CHECK(rc == OWS_ERR_ARG && strstr(ows_last_error(s), "frame 0: meta_json is 1100012 "
              "bytes"), "huge metadata: %d %s", rc, ows_last_error(s));
        printf("huge metadata: %s\n", ows_last_error(s));
    }
    CHECK(ows_append(s, frame, nbytes, "") == OWS_OK, "append: %s", ows_last_error(s));
    CHECK(ows_commit(s, NULL) == OWS_ERR_ARG, "commit without claim accepted");
    void *slot = NULL;
    CHECK(ows_claim(s, &slot) == OWS_OK && slot, "claim: %s", ows_last_error(s));
    CHECK(ows_append(s, frame, nbytes, NULL) == OWS_ERR_CLAIMED, "append while claimed");
    CHECK(ows_skip(s, 1) == OWS_ERR_CLAIMED, "skip while claimed");
    memset(slot, 1, nbytes);
    CHECK(ows_commit(s, "{\"delta_t\": 0.5}") == OWS_OK, "commit: %s", ows_last_error(s));
    CHECK(ows_skip(s, 1000) == OWS_ERR_TOO_MANY, "skip past the declared frames accepted");
    CHECK(ows_skip(s, 95) == OWS_OK, "skip: %s", ows_last_error(s));
    for (int i = 0; i < 3; i++)
        CHECK(ows_append(s, frame, nbytes, NULL) == OWS_OK, "append %d: %s", i, ows_last_error(s));
    rc = ows_append(s, frame, nbytes, NULL);
    CHECK(rc == OWS_ERR_TOO_MANY && strstr(ows_last_error(s), "frame 100"), "101st frame: %d %s",
          rc, ows_last_error(s));
    CHECK(ows_frames_sent(s) == 100, "frames_sent %lld", (long long)ows_frames_sent(s));
    char status[4096];
    CHECK(ows_status(s, status, sizeof status) == OWS_OK && strstr(status, "\"frames_received\""),
          "status: %s", ows_last_error(s));

    printf("READY\n");
    fflush(stdout);
    char line[16];
    CHECK(fgets(line, sizeof line, stdin), "no go-ahead"); /* the daemon is gone or hung now */
    double t0 = now();
    for (;;) {
        rc = ows_append(s, frame, nbytes, NULL);
        if (rc == OWS_ERR_DAEMON_GONE) break;
        CHECK(rc == OWS_ERR_TOO_MANY, "append after kill: %d %s", rc, ows_last_error(s));
        CHECK(now() - t0 < limit, "daemon death not noticed within %.1f s", limit);
        struct timespec pause = {0, 20 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    printf("GONE after %.2f s: %s\n", now() - t0, ows_last_error(s));
    double t1 = now();
    rc = ows_status(s, status, sizeof status);
    CHECK(rc == OWS_ERR_DAEMON_GONE && now() - t1 < limit, "status after kill gave %d after %.1f s",
          rc, now() - t1);
    t1 = now();
    rc = ows_close(s, report, sizeof report);
    CHECK(rc == OWS_ERR_DAEMON_GONE && now() - t1 < limit, "close after kill gave %d after %.1f s",
          rc, now() - t1);
    CHECK(strstr(report, "\"error\""), "close report: %s", report);
    printf("closed: %s\n", report);
    return 0;
}

int main(int argc, char **argv) {
    CHECK(argc == 4 || argc == 5, "usage: ows_errors ENDPOINT TOKEN SETTINGS.json [LIMIT_S]");
    FILE *f = fopen(argv[3], "rb");
    CHECK(f, "cannot read %s", argv[3]);
    char settings[8192];
    size_t n = fread(settings, 1, sizeof settings - 1, f);
    settings[n] = 0;
    fclose(f);
    char *frame = calloc(1, 4096);
    CHECK(frame, "out of memory");
    int rc = run(argv[1], argv[2], settings, argc == 5 ? atof(argv[4]) : 3.0, frame);
    free(frame);
    return rc;
}
