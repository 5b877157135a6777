/* ows_client.c — see ows_client.h and PROTOCOL.md. Depends on libzmq and cJSON.
 *
 * Linux: everything (shared-memory and inline transports). Windows (MSVC or MinGW): the same
 * file builds into ows_client.dll with the inline transport only. */
#if !defined(_WIN32)
#define _GNU_SOURCE /* MAP_POPULATE, readlink */
#elif !defined(OWS_STATIC) && !defined(OWS_BUILD_DLL)
#define OWS_BUILD_DLL /* compiling this file on Windows builds the DLL */
#endif
#include "ows_client.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h> /* before windows.h: it includes winsock2.h */

#if defined(_WIN32)
#include <process.h>
#include <windows.h>
#define OWS_HAVE_SHM 0
#else
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#define OWS_HAVE_SHM 1
#endif

#define OWS_TAG "OWS1"
#define OWS_TAG_LEN 4
#define OWS_MINOR 1           /* the protocol minor version this library speaks (1.1) */
#define OWS_LIVENESS_MS 250   /* ms between daemon liveness checks (pid, pings) */
#define OWS_PING_AFTER 1.0    /* s without any message from the daemon before a check pings it */
#define OWS_HUNG_TIMEOUT 5.0  /* s a ping may stay unanswered before the daemon counts as gone */
#define OWS_STATUS_TIMEOUT 30.0 /* s to wait for a status reply from a daemon that answers pings */
#define OWS_ABANDON_TIMEOUT 5.0 /* s to wait for `closed` when open fails after `opened` */
#define OWS_RING_MIN_HEADER 60
#define OWS_RING_VERSION 2
/* Most bytes of JSON one frame's metadata may take (the daemon's header limit is 1 MiB). */
#define OWS_MAX_META_BYTES 1000000
#define OWS_Z85_KEY 40 /* a CURVE key in Z85 text */

/* The CURVE keys of a daemon that encrypts its connections (Z85, NUL-terminated): its public
 * key and the client key pair its connection file hands out. */
typedef struct {
    char server_public[OWS_Z85_KEY + 1], client_public[OWS_Z85_KEY + 1],
        client_secret[OWS_Z85_KEY + 1];
} ows_curve;

struct ows_stream {
    void *ctx;
    void *sock;
    void *auth_events;     /* during open: the monitor telling a failed handshake */
    int handshake_failed;  /* the ZMQ_EVENT_HANDSHAKE_FAILED_* event seen, or 0 */
    char endpoint[512];
    char token[256];
    int curve;             /* encrypt with CURVE (keys below) instead of PLAIN */
    ows_curve keys;
    int sid;
    int64_t seq, dropped, total; /* total < 0: unbounded */
    size_t frame_nbytes;
    int credits;
    int nfree;             /* slots the client may fill */
    unsigned char *busy;   /* busy[i]: slot i is lent to the daemon (or claimed) */
    int next_slot;         /* the slot after the previous frame's: the next frame's choice */
    int inline_mode;
    unsigned char *ring;
    size_t ring_size, header_size, slot_size;
    volatile uint64_t *filled; /* the slot table: 1 + the frame last written into each slot */
    volatile uint32_t *err_flag;
    uint32_t no_flag;
    int daemon_pid;        /* > 0: the daemon shares our pid namespace, watch its pid */
    double next_liveness, last_heard, ping_sent; /* ping_sent 0: no ping outstanding */
    char policy;           /* 'b'lock, 'd'rop, 'r'aise */
    double block_timeout;
    int claimed_slot;      /* -1: none, -2: scratch (dropped) */
    unsigned char *scratch;
    int closed;
    int daemon_minor;      /* the protocol minor version the daemon speaks (opened.minor) */
    int remote_code;       /* != 0: the daemon reported an error or closed the stream */
    char remote_msg[1024];
    /* frames the daemon refused (their slots come back in releases; the stream goes on):
     * the next frame call reports the first one not reported yet, ows_close the first */
    int64_t refused;
    int refusal_pending;
    char refusal_msg[1024], first_refusal[1024];
    cJSON *final_report;   /* a `closed` the daemon sent on its own (shutdown, client lost) */
    char error[1024];
    /* heartbeat thread, only when the daemon cannot watch our pid */
    void *hb_ctl, *hb_peer; /* inproc PAIR sockets: a message on hb_ctl stops the thread */
    void *hb_sock;          /* the thread's DEALER */
    char *hb_msg;
    long hb_interval_ms;
    int hb_running;
#if defined(_WIN32)
    HANDLE hb;
#else
    pthread_t hb;
#endif
};

static double now_s(void) {
#if defined(_WIN32)
    LARGE_INTEGER f, c;
    QueryPerformanceFrequency(&f);
    QueryPerformanceCounter(&c);
    return (double)c.QuadPart / (double)f.QuadPart;
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
#endif
}

static int fail(ows_stream *s, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->error, sizeof s->error, fmt, ap);
    va_end(ap);
    return code;
}

/* An error the daemon reported: every later frame call fails with it. */
static void remote_fail(ows_stream *s, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->remote_msg, sizeof s->remote_msg, fmt, ap);
    va_end(ap);
    if (!s->remote_code || code == OWS_ERR_DAEMON_GONE) s->remote_code = code;
    snprintf(s->error, sizeof s->error, "%s", s->remote_msg);
}

static const char *nonempty(const char *text) { return text && *text ? text : NULL; }

const char *ows_last_error(const ows_stream *s) { return s ? s->error : "no stream"; }
size_t ows_frame_nbytes(const ows_stream *s) { return s ? s->frame_nbytes : 0; }
int64_t ows_frames_sent(const ows_stream *s) { return s ? s->seq : 0; }
int64_t ows_frames_dropped(const ows_stream *s) { return s ? s->dropped : 0; }
int64_t ows_frames_refused(const ows_stream *s) { return s ? s->refused : 0; }
int ows_daemon_minor(const ows_stream *s) { return s ? s->daemon_minor : 0; }

/* ---------------------------------------------------------------- messages */

static int send_part(void *sock, const void *data, size_t n, int flags) {
    for (;;) { /* a signal must not leave half a multipart message queued */
        if (zmq_send(sock, data, n, flags) >= 0) return 0;
        if (zmq_errno() != EINTR) return -1;
    }
}

static int send_msg(void *sock, const char *header, const void *payload, size_t nbytes,
                    int flags) {
    if (send_part(sock, OWS_TAG, OWS_TAG_LEN, ZMQ_SNDMORE | flags) < 0) return -1;
    if (send_part(sock, header, strlen(header), (payload ? ZMQ_SNDMORE : 0) | flags) < 0)
        return -1;
    if (payload && send_part(sock, payload, nbytes, flags) < 0) return -1;
    return 0;
}

static int send_json(ows_stream *s, cJSON *obj) {
    char *text = obj ? cJSON_PrintUnformatted(obj) : NULL;
    if (!text) return fail(s, OWS_ERR_SYSTEM, "out of memory");
    int rc = send_msg(s->sock, text, NULL, 0, 0);
    cJSON_free(text);
    return rc < 0 ? fail(s, OWS_ERR_SYSTEM, "zmq send: %s", zmq_strerror(zmq_errno())) : OWS_OK;
}

/* Receive one message if one arrives within timeout_ms. Returns 1 with *out = its header
 * (caller frees), 0 if none came, 2 for a malformed message (dropped), -1 if zmq failed. */
static int recv_one(ows_stream *s, long timeout_ms, cJSON **out) {
    zmq_pollitem_t item = {s->sock, 0, ZMQ_POLLIN, 0};
    *out = NULL;
    if (zmq_poll(&item, 1, timeout_ms) <= 0) return 0;
    zmq_msg_t part;
    int index = 0, more = 1, bad = 0;
    while (more) {
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, s->sock, 0) < 0) {
            int e = zmq_errno();
            zmq_msg_close(&part);
            if (e == EINTR && index == 0) return 0;
            if (e == EINTR) continue; /* the rest of a multipart message is already here */
            cJSON_Delete(*out);
            *out = NULL;
            return -1;
        }
        if (index == 0 && (zmq_msg_size(&part) != OWS_TAG_LEN || memcmp(zmq_msg_data(&part), OWS_TAG, 4)))
            bad = 1;
        if (index == 1 && !bad)
            *out = cJSON_ParseWithLength(zmq_msg_data(&part), zmq_msg_size(&part));
        more = zmq_msg_more(&part);
        zmq_msg_close(&part);
        index++;
    }
    s->last_heard = now_s();
    if (bad || !*out || !cJSON_IsString(cJSON_GetObjectItem(*out, "type"))) {
        cJSON_Delete(*out);
        *out = NULL;
        return 2;
    }
    return 1;
}

static const char *type_of(const cJSON *h) { return cJSON_GetObjectItem(h, "type")->valuestring; }

static const char *str_field(const cJSON *h, const char *name, const char *dflt) {
    const cJSON *v = cJSON_GetObjectItem(h, name);
    return cJSON_IsString(v) ? v->valuestring : dflt;
}

static double num_field(const cJSON *h, const char *name, double dflt) {
    const cJSON *v = cJSON_GetObjectItem(h, name);
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

/* Slots the daemon no longer reads come back to the free list (ignoring any slot that is
 * not lent out, so a stray or repeated release can never hand out a busy slot). */
static void take_release(ows_stream *s, const cJSON *h) {
    const cJSON *slot;
    cJSON_ArrayForEach(slot, cJSON_GetObjectItem(h, "slots")) {
        if (!cJSON_IsNumber(slot)) continue;
        int i = slot->valueint;
        if (i < 0 || i >= s->credits || !s->busy[i]) continue;
        s->busy[i] = 0;
        s->nfree++;
    }
#if OWS_HAVE_SHM
    /* the daemon's last read of these slots happens before our next writes into them */
    atomic_thread_fence(memory_order_acquire);
#endif
}

/* Whether an error with this code answers the request whose reply is `want`. Frames get no
 * reply, so an error about a frame (refused metadata, sequence, slot: it names the frame in
 * `seq`) or a write failure comes at any time; status and close can only be refused for
 * their stream. */
static int answers(const char *want, const char *code, double seq) {
    if (!want || seq >= 0) return 0;
    if (!strcmp(want, "opened")) return strcmp(code, "write_failed") != 0;
    return !strcmp(code, "no_such_stream") || !strcmp(code, "unknown_type") ||
           !strcmp(code, "unsupported_version");
}

/* A frame the daemon refused: counted, its message kept for the next frame call. */
static void note_refusal(ows_stream *s, const cJSON *h) {
    s->refused++;
    char msg[1024];
    snprintf(msg, sizeof msg, "daemon: %s (%s)", str_field(h, "message", "?"),
             str_field(h, "code", "?"));
    if (!s->refusal_pending) snprintf(s->refusal_msg, sizeof s->refusal_msg, "%s", msg);
    if (!s->first_refusal[0]) snprintf(s->first_refusal, sizeof s->first_refusal, "%s", msg);
    s->refusal_pending = 1;
}

/* A frame call that did its work: OWS_REFUSED instead of OWS_OK when the daemon refused an
 * earlier frame since the last report (ows_last_error names it). */
static int done_or_refused(ows_stream *s, int rc) {
    if (rc != OWS_OK || !s->refusal_pending) return rc;
    s->refusal_pending = 0;
    snprintf(s->error, sizeof s->error, "%s", s->refusal_msg);
    return OWS_REFUSED;
}

/* Handle what the daemon sent, waiting up to timeout_ms for the first message: releases free
 * their slots; errors about frames, write errors and a `closed` the daemon sent on its own are
 * remembered (the next frame call reports them). Returns the first message of type `want`, or
 * an error answering that request, for the caller to free; else NULL. */
static cJSON *pump(ows_stream *s, long timeout_ms, const char *want) {
    cJSON *h;
    long wait = timeout_ms;
    int got;
    while ((got = recv_one(s, wait, &h)) != 0) {
        wait = 0;
        if (got < 0) break;
        if (got == 2) continue;
        const char *type = type_of(h);
        if (!strcmp(type, "release")) {
            take_release(s, h);
        } else if (want && !strcmp(type, want)) {
            return h;
        } else if (!strcmp(type, "error")) {
            const char *code = str_field(h, "code", "?");
            double seq = num_field(h, "seq", -1);
            if (answers(want, code, seq)) return h;
            if (s->daemon_minor >= 1 && seq >= 0 && strcmp(code, "write_failed") &&
                strcmp(code, "shutdown")) {
                /* a refused frame (1.1): its slot comes back in a release, the stream goes on */
                note_refusal(s, h);
            } else {
                /* "shutdown": the daemon ends the stream itself (SIGTERM, client lost) */
                remote_fail(s, strcmp(code, "shutdown") ? OWS_ERR_DAEMON : OWS_ERR_DAEMON_GONE,
                            "daemon: %s (%s)", str_field(h, "message", "?"), code);
            }
        } else if (!strcmp(type, "closed")) {
            remote_fail(s, OWS_ERR_DAEMON_GONE, "the daemon closed the stream (%s) after writing "
                        "%.0f frames", str_field(h, "reason", "?"),
                        num_field(h, "frames_written", 0));
            cJSON_Delete(s->final_report);
            s->final_report = h;
            continue;
        } /* else: pong, or a reply nobody waits for any more */
        cJSON_Delete(h);
    }
    return NULL;
}

#if OWS_HAVE_SHM
/* Whether a pid runs; a zombie (dead, not yet reaped by its parent) counts as gone. */
static int pid_running(int pid) {
    if (kill(pid, 0) < 0 && errno == ESRCH) return 0;
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "rb");
    if (!f) return 1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *paren = strrchr(buf, ')');
    return !(paren && paren[1] == ' ' && (paren[2] == 'Z' || paren[2] == 'X'));
}
#endif

/* Whether the daemon is still there: its pid (when we can see it) and its answers to pings.
 * A ping goes out after OWS_PING_AFTER s without any message; the daemon counts as gone when a
 * ping stays unanswered for OWS_HUNG_TIMEOUT s. Silence alone never counts: the caller may have
 * been idle for any time. Call pump() first so that answers are seen. */
static int check_daemon(ows_stream *s) {
    double t = now_s();
    s->next_liveness = t + OWS_LIVENESS_MS / 1000.0;
#if OWS_HAVE_SHM
    if (s->daemon_pid > 0 && !pid_running(s->daemon_pid))
        return fail(s, OWS_ERR_DAEMON_GONE, "the writer daemon (pid %d) is gone", s->daemon_pid);
#endif
    if (s->ping_sent > 0 && s->last_heard >= s->ping_sent) s->ping_sent = 0; /* answered */
    if (s->ping_sent > 0) {
        if (t - s->ping_sent > OWS_HUNG_TIMEOUT)
            return fail(s, OWS_ERR_DAEMON_GONE, "the daemon at %s has not answered for %.1f s "
                        "(dead, hung or unreachable)", s->endpoint, t - s->ping_sent);
    } else if (t - s->last_heard > OWS_PING_AFTER) {
        if (send_msg(s->sock, "{\"type\":\"ping\"}", NULL, 0, ZMQ_DONTWAIT) == 0) s->ping_sent = t;
    }
    return OWS_OK;
}

/* Wait for a reply of the given type (timeout <= 0: as long as the daemon lives); *out
 * receives it (caller frees). An error reply returns OWS_ERR_DAEMON with its message. */
/* Every connection to the daemon authenticates in the ZMTP handshake (PROTOCOL.md section
 * 2): PLAIN (user "ows", the token as password) on ipc and loopback, or CURVE with the keys
 * of the daemon's connection file, which also encrypts everything sent. */
static int authenticate(ows_stream *s, void *sock) {
    if (s->curve)
        return zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, s->keys.server_public,
                              OWS_Z85_KEY + 1) < 0 ||
               zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, s->keys.client_public,
                              OWS_Z85_KEY + 1) < 0 ||
               zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, s->keys.client_secret,
                              OWS_Z85_KEY + 1) < 0 ? -1 : 0;
    return zmq_setsockopt(sock, ZMQ_PLAIN_USERNAME, "ows", 3) < 0 ||
           zmq_setsockopt(sock, ZMQ_PLAIN_PASSWORD, s->token, strlen(s->token)) < 0 ? -1 : 0;
}

/* Whether an endpoint never leaves this machine: ipc, inproc, or TCP to 127.0.0.0/8, ::1 or
 * localhost. Anything else needs CURVE: PLAIN would send the token in clear text. */
static int is_loopback(const char *endpoint) {
    if (!strncmp(endpoint, "ipc://", 6) || !strncmp(endpoint, "inproc://", 9)) return 1;
    if (strncmp(endpoint, "tcp://", 6)) return 0;
    char host[512];
    snprintf(host, sizeof host, "%s", endpoint + 6);
    char *colon = strrchr(host, ':');
    if (colon) *colon = 0;
    const char *h = host;
    size_t n = strlen(h);
    if (n >= 2 && h[0] == '[' && h[n - 1] == ']') { /* [::1] */
        host[n - 1] = 0;
        h++;
    }
    return !strcmp(h, "localhost") || !strcmp(h, "::1") || !strncmp(h, "127.", 4);
}

/* A failed handshake (refused token or keys, or PLAIN meeting CURVE) is reported by no
 * message: a socket monitor tells it. */
static int handshake_failed(ows_stream *s) {
    if (!s->auth_events) return s->handshake_failed;
    zmq_msg_t ev;
    zmq_msg_init(&ev);
    while (zmq_msg_recv(&ev, s->auth_events, ZMQ_DONTWAIT) >= 0) {
        if (zmq_msg_more(&ev) == 0) continue; /* the address part of an event */
        uint16_t event = 0;
        if (zmq_msg_size(&ev) >= 2) memcpy(&event, zmq_msg_data(&ev), 2);
        /* PLAIN meeting CURVE shows as _PROTOCOL or (more often) _NO_DETAIL */
        if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH ||
            event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL ||
            event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL)
            s->handshake_failed = event;
    }
    zmq_msg_close(&ev);
    return s->handshake_failed;
}

static void stop_auth_events(ows_stream *s) {
    if (!s->auth_events) return;
    zmq_socket_monitor(s->sock, NULL, 0);
    zmq_close(s->auth_events);
    s->auth_events = NULL;
}

static int await_reply(ows_stream *s, const char *type, double timeout, cJSON **out) {
    double deadline = timeout > 0 ? now_s() + timeout : 0;
    *out = NULL;
    for (;;) {
        cJSON *h = pump(s, OWS_LIVENESS_MS, type);
        if (h && !strcmp(type_of(h), type)) {
            *out = h;
            return OWS_OK;
        }
        if (!h && s->final_report) { /* the daemon closed the stream meanwhile: no reply */
            snprintf(s->error, sizeof s->error, "%s", s->remote_msg);
            return OWS_ERR_DAEMON_GONE;
        }
        if (h) { /* an error answering this request */
            /* a 1.0 daemon's errors have no "seq" (every 1.1 error has): name both versions
             * when it refuses an open, so a refusal of something 1.1 added reads as such */
            const char *code = str_field(h, "code", "?");
            int older = !strcmp(type, "opened") && !cJSON_GetObjectItem(h, "seq") &&
                        strcmp(code, "unauthorized") && strcmp(code, "resources");
            fail(s, OWS_ERR_DAEMON, "daemon: %s (%s)%s", str_field(h, "message", "?"), code,
                 older ? " (the daemon speaks protocol 1.0, this library 1.1: upgrade the "
                         "daemon's ome-writers-service)" : "");
            cJSON_Delete(h);
            return OWS_ERR_DAEMON;
        }
        int failed = handshake_failed(s);
        if (failed == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
            return fail(s, OWS_ERR_DAEMON, "daemon: open refused: the daemon at %s did not "
                        "accept the %s (unauthorized): see its connection file", s->endpoint,
                        s->curve ? "CURVE keys" : "token");
        if (failed)
            return fail(s, OWS_ERR_DAEMON, "daemon: open refused: the daemon at %s speaks "
                        "another security mechanism than %s (unauthorized): %s", s->endpoint,
                        s->curve ? "CURVE" : "PLAIN", s->curve
                        ? "it expects the token without keys: open it with its endpoint and token"
                        : "it encrypts (CURVE): open it with its connection file, "
                          "ows_open_connection_file");
        int rc = check_daemon(s);
        if (rc != OWS_OK) return rc;
        if (deadline > 0 && now_s() > deadline)
            return fail(s, OWS_ERR_DAEMON_GONE, "no %s from the daemon at %s within %.0f s", type,
                        s->endpoint, timeout);
    }
}

/* ---------------------------------------------------------------- connection file, ring */

/* The local daemon's connection file: $OME_WRITERS_SERVICE_RUNTIME_DIR/daemon.json, else
 * $XDG_RUNTIME_DIR/ome-writers-service-UID/daemon.json, else /tmp/ome-writers-service-UID/. */
static int default_connection_file(char *path, size_t len, char *err, size_t errlen) {
    const char *rt = nonempty(getenv("OME_WRITERS_SERVICE_RUNTIME_DIR"));
#if defined(_WIN32)
    const char *local = nonempty(getenv("LOCALAPPDATA")); /* the daemon's default there */
    if (!rt && !local) {
        snprintf(err, errlen, "no endpoint/token given and neither OME_WRITERS_SERVICE_RUNTIME_DIR"
                 " nor LOCALAPPDATA is set: pass the endpoint and token of the daemon's daemon.json");
        return -1;
    }
    if (rt) snprintf(path, len, "%s/daemon.json", rt);
    else snprintf(path, len, "%s\\ome-writers-service\\daemon.json", local);
#else
    (void)err;
    (void)errlen;
    const char *xdg = nonempty(getenv("XDG_RUNTIME_DIR"));
    if (rt) snprintf(path, len, "%s/daemon.json", rt);
    else if (xdg) snprintf(path, len, "%s/ome-writers-service-%u/daemon.json", xdg,
                           (unsigned)getuid());
    else snprintf(path, len, "/tmp/ome-writers-service-%u/daemon.json", (unsigned)getuid());
#endif
    return 0;
}

/* Endpoint, token and (a daemon that encrypts) CURVE keys of a connection file; *has_curve
 * says whether it holds keys. */
static int read_connection_file(const char *path, char *endpoint, size_t elen, char *token,
                                size_t tlen, ows_curve *keys, int *has_curve, char *err,
                                size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "no daemon: cannot read %s (%s)", path, strerror(errno));
        return -1;
    }
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    cJSON *info = cJSON_Parse(buf);
    const char *e = str_field(info, "endpoint", NULL), *t = str_field(info, "token", NULL);
    int ok = e && t;
    if (ok) {
        snprintf(endpoint, elen, "%s", e);
        snprintf(token, tlen, "%s", t);
    } else {
        snprintf(err, errlen, "%s is not a daemon connection file", path);
    }
    const cJSON *curve = cJSON_GetObjectItem(info, "curve");
    *has_curve = ok && cJSON_IsObject(curve);
    if (*has_curve) {
        const char *names[3] = {"server_public", "client_public", "client_secret"};
        char *dest[3] = {keys->server_public, keys->client_public, keys->client_secret};
        for (int i = 0; i < 3 && ok; i++) {
            const char *key = str_field(curve, names[i], "");
            ok = strlen(key) == OWS_Z85_KEY;
            if (ok) memcpy(dest[i], key, OWS_Z85_KEY + 1);
            else snprintf(err, errlen, "%s: curve.%s is not a 40-character Z85 CURVE key",
                          path, names[i]);
        }
    }
    cJSON_Delete(info);
    return ok ? 0 : -1;
}

#if OWS_HAVE_SHM
static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t le64(const unsigned char *p) { return le32(p) | (uint64_t)le32(p + 4) << 32; }

/* Map the stream's ring by name; its layout comes from its own header (PROTOCOL.md 3.1). */
static int attach_ring(ows_stream *s, const char *name) {
    if (!name || !*name || strchr(name, '/'))
        return fail(s, OWS_ERR_DAEMON, "opened: no valid ring name");
    int fd = shm_open(name, O_RDWR, 0);
    if (fd < 0) {
        int e = errno;
        return fail(s, OWS_ERR_SYSTEM, "shm_open(%s): %s%s", name, strerror(e),
                    e == ENOENT ? " — this process does not see the daemon's /dev/shm (another "
                    "IPC namespace, e.g. a container without ipc: host / ipc: service:...); "
                    "use the inline transport" : "");
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        return fail(s, OWS_ERR_SYSTEM, "fstat(%s): %s", name, strerror(e));
    }
    if (st.st_size < OWS_RING_MIN_HEADER) {
        close(fd);
        return fail(s, OWS_ERR_DAEMON, "%s is not a frame ring (%lld bytes)", name,
                    (long long)st.st_size);
    }
    int flags = MAP_SHARED;
#ifdef MAP_POPULATE
    flags |= MAP_POPULATE; /* map every page now: the first touch of a page is slow */
#endif
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, flags, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED) return fail(s, OWS_ERR_SYSTEM, "mmap(%s): %s", name, strerror(e));
    s->ring = p;
    s->ring_size = (size_t)st.st_size;
    const unsigned char *h = s->ring;
    if (memcmp(h, "OWSRING1", 8) || le32(h + 8) != OWS_RING_VERSION)
        return fail(s, OWS_ERR_DAEMON, "%s is not a version-%d frame ring", name,
                    OWS_RING_VERSION);
    uint64_t header = le32(h + 12), slots = le32(h + 16), slot_size = le64(h + 24);
    uint64_t frame = le64(h + 32), table = le32(h + 56);
    if (header < OWS_RING_MIN_HEADER || frame != s->frame_nbytes || slot_size < frame ||
        slots < (uint64_t)s->credits || header + slots * slot_size > (uint64_t)st.st_size ||
        table < OWS_RING_MIN_HEADER || table % 8 || table + 8 * slots > header)
        return fail(s, OWS_ERR_DAEMON, "ring %s does not match the stream (header %llu, %llu "
                    "slots of %llu bytes for %llu-byte frames, %zu credits, file %lld bytes)",
                    name, (unsigned long long)header, (unsigned long long)slots,
                    (unsigned long long)slot_size, (unsigned long long)frame, (size_t)s->credits,
                    (long long)st.st_size);
    s->header_size = (size_t)header;
    s->slot_size = (size_t)slot_size;
    s->err_flag = (volatile uint32_t *)(void *)(s->ring + 40);
    s->filled = (volatile uint64_t *)(void *)(s->ring + table);
    return OWS_OK;
}
#endif

/* ---------------------------------------------------------------- heartbeat thread */

/* Runs on its own thread with its own sockets (created and connected by start_heartbeat,
 * handed over at thread start, closed here): hb_sock sends heartbeats, a message on hb_peer
 * stops the loop at once. */
static void heartbeat_loop(ows_stream *s) {
    void *sock = s->hb_sock, *ctl = s->hb_peer;
    for (;;) {
        /* never block: with the daemon gone, heartbeats are simply not queued */
        send_msg(sock, s->hb_msg, NULL, 0, ZMQ_DONTWAIT);
        char drain[256]; /* error replies (stream already closed) need no action */
        while (zmq_recv(sock, drain, sizeof drain, ZMQ_DONTWAIT) >= 0) {
        }
        zmq_pollitem_t item = {ctl, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&item, 1, s->hb_interval_ms);
        if (rc > 0 || (rc < 0 && zmq_errno() != EINTR)) break; /* stop message or ETERM */
    }
    zmq_close(sock);
    zmq_close(ctl);
}

#if defined(_WIN32)
static unsigned __stdcall heartbeat_main(void *arg) {
    heartbeat_loop(arg);
    return 0;
}
#else
static void *heartbeat_main(void *arg) {
    heartbeat_loop(arg);
    return NULL;
}
#endif

static void *new_socket(ows_stream *s, int type) {
    void *sock = zmq_socket(s->ctx, type);
    int zero = 0;
    if (sock) zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero);
    return sock;
}

static int start_heartbeat(ows_stream *s, const cJSON *opened) {
    cJSON *msg = cJSON_CreateObject();
    cJSON_AddStringToObject(msg, "type", "heartbeat");
    cJSON_AddNumberToObject(msg, "stream", s->sid);
    cJSON_AddStringToObject(msg, "key", str_field(opened, "heartbeat_key", ""));
    s->hb_msg = cJSON_PrintUnformatted(msg);
    cJSON_Delete(msg);
    if (!s->hb_msg) return fail(s, OWS_ERR_SYSTEM, "out of memory");
    double interval = num_field(opened, "heartbeat_interval", 0.3);
    if (interval < 0.01) interval = 0.01;
    if (interval > 10) interval = 10;
    s->hb_interval_ms = (long)(interval * 1000);
    char name[64];
    snprintf(name, sizeof name, "inproc://ows-heartbeat-%p", (void *)s);
    s->hb_ctl = new_socket(s, ZMQ_PAIR);
    s->hb_peer = new_socket(s, ZMQ_PAIR);
    s->hb_sock = new_socket(s, ZMQ_DEALER);
    int hwm = 8;
    if (!s->hb_ctl || !s->hb_peer || !s->hb_sock ||
        zmq_setsockopt(s->hb_sock, ZMQ_SNDHWM, &hwm, sizeof hwm) < 0 ||
        zmq_bind(s->hb_ctl, name) < 0 || zmq_connect(s->hb_peer, name) < 0 ||
        authenticate(s, s->hb_sock) < 0 || zmq_connect(s->hb_sock, s->endpoint) < 0)
        return fail(s, OWS_ERR_SYSTEM, "heartbeat sockets: %s", zmq_strerror(zmq_errno()));
#if defined(_WIN32)
    s->hb = (HANDLE)_beginthreadex(NULL, 0, heartbeat_main, s, 0, NULL);
    s->hb_running = s->hb != 0;
#else
    s->hb_running = pthread_create(&s->hb, NULL, heartbeat_main, s) == 0;
#endif
    return s->hb_running ? OWS_OK : fail(s, OWS_ERR_SYSTEM, "cannot start the heartbeat thread");
}

static void stop_heartbeat(ows_stream *s) {
    if (s->hb_running) { /* the thread closes hb_sock and hb_peer */
        send_part(s->hb_ctl, "", 0, 0); /* hb_peer is connected: never blocks */
#if defined(_WIN32)
        WaitForSingleObject(s->hb, INFINITE);
        CloseHandle(s->hb);
#else
        pthread_join(s->hb, NULL);
#endif
        s->hb_running = 0;
    } else {
        if (s->hb_sock) zmq_close(s->hb_sock);
        if (s->hb_peer) zmq_close(s->hb_peer);
    }
    if (s->hb_ctl) zmq_close(s->hb_ctl);
    s->hb_sock = s->hb_peer = s->hb_ctl = NULL;
}

static void release_stream(ows_stream *s) {
    stop_heartbeat(s);
    stop_auth_events(s);
#if OWS_HAVE_SHM
    if (s->ring) munmap(s->ring, s->ring_size);
#endif
    if (s->sock) zmq_close(s->sock);
    if (s->ctx) zmq_ctx_term(s->ctx);
    cJSON_Delete(s->final_report);
    cJSON_free(s->hb_msg);
    free(s->busy);
    free(s->scratch);
    free(s);
}

/* ---------------------------------------------------------------- public API */

static int open_error(char *err, size_t errlen, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return code;
}

/* The daemon opened a stream we cannot use: close it, so it does not stay open (with its
 * ring) until this process exits. */
static void abandon(ows_stream *s) {
    char header[128];
    snprintf(header, sizeof header, "{\"type\":\"close\",\"stream\":%d,\"frames\":0}", s->sid);
    if (send_msg(s->sock, header, NULL, 0, 0) < 0) return;
    char keep[sizeof s->error];
    memcpy(keep, s->error, sizeof keep);
    cJSON *closed = NULL;
    double deadline = now_s() + OWS_ABANDON_TIMEOUT;
    while (!closed && now_s() < deadline && check_daemon(s) == OWS_OK)
        closed = pump(s, OWS_LIVENESS_MS, "closed");
    cJSON_Delete(closed);
    memcpy(s->error, keep, sizeof keep);
}

/* Open a stream on the daemon at ep (CURVE keys: NULL for PLAIN); the arguments checked. */
static int open_stream(const char *ep, const char *tok, const ows_curve *keys,
                       const char *settings_json, int transport, ows_stream **out, char *err,
                       size_t errlen);

static int check_open_args(const char *settings_json, int transport, ows_stream **out,
                           char *err, size_t errlen) {
    if (out) *out = NULL;
    if (!out) return open_error(err, errlen, OWS_ERR_ARG, "out is NULL");
    if (!settings_json) return open_error(err, errlen, OWS_ERR_ARG, "settings_json is NULL");
    if (transport != OWS_TRANSPORT_SHM && transport != OWS_TRANSPORT_INLINE)
        return open_error(err, errlen, OWS_ERR_ARG, "transport %d: use OWS_TRANSPORT_SHM (0) or "
                          "OWS_TRANSPORT_INLINE (1)", transport);
#if !OWS_HAVE_SHM
    if (transport == OWS_TRANSPORT_SHM)
        return open_error(err, errlen, OWS_ERR_ARG, "no POSIX shared memory on this platform: "
                          "use OWS_TRANSPORT_INLINE (1)");
#endif
    return OWS_OK;
}

#define OWS_FIX_ERR(err, errlen, scratch)                                                      \
    do {                                                                                       \
        if (!(err) || !(errlen)) {                                                             \
            (err) = (scratch);                                                                 \
            (errlen) = sizeof(scratch);                                                        \
        }                                                                                      \
        (err)[0] = 0;                                                                          \
    } while (0)

int ows_open_ex(const char *endpoint, const char *token, const char *settings_json,
                int transport, ows_stream **out, char *err, size_t errlen) {
    char ep[512] = "", tok[256] = "", path[600], scratch_err[8];
    OWS_FIX_ERR(err, errlen, scratch_err);
    int rc = check_open_args(settings_json, transport, out, err, errlen);
    if (rc != OWS_OK) return rc;
    endpoint = nonempty(endpoint);
    token = nonempty(token);
    ows_curve keys;
    int has_curve = 0;
    if (!endpoint || !token) {
        if (default_connection_file(path, sizeof path, err, errlen) < 0 ||
            read_connection_file(path, ep, sizeof ep, tok, sizeof tok, &keys, &has_curve, err,
                                 errlen) < 0)
            return OWS_ERR_DAEMON_GONE;
        /* the file's keys belong to the file's endpoint */
        if (endpoint && strcmp(endpoint, ep)) has_curve = 0;
    }
    if (endpoint) snprintf(ep, sizeof ep, "%s", endpoint);
    if (token) snprintf(tok, sizeof tok, "%s", token);
    return open_stream(ep, tok, has_curve ? &keys : NULL, settings_json, transport, out, err,
                       errlen);
}

int ows_open_connection_file(const char *connection_file, const char *endpoint,
                             const char *settings_json, int transport, ows_stream **out,
                             char *err, size_t errlen) {
    char ep[512], tok[256], path[600], scratch_err[8];
    OWS_FIX_ERR(err, errlen, scratch_err);
    int rc = check_open_args(settings_json, transport, out, err, errlen);
    if (rc != OWS_OK) return rc;
    if (nonempty(connection_file)) snprintf(path, sizeof path, "%s", connection_file);
    else if (default_connection_file(path, sizeof path, err, errlen) < 0)
        return OWS_ERR_DAEMON_GONE;
    ows_curve keys;
    int has_curve = 0;
    if (read_connection_file(path, ep, sizeof ep, tok, sizeof tok, &keys, &has_curve, err,
                             errlen) < 0)
        return nonempty(connection_file) ? OWS_ERR_ARG : OWS_ERR_DAEMON_GONE;
    if (nonempty(endpoint)) snprintf(ep, sizeof ep, "%s", endpoint);
    return open_stream(ep, tok, has_curve ? &keys : NULL, settings_json, transport, out, err,
                       errlen);
}

static int open_stream(const char *ep, const char *tok, const ows_curve *keys,
                       const char *settings_json, int transport, ows_stream **out, char *err,
                       size_t errlen) {
    if (!keys && !is_loopback(ep))
        return open_error(err, errlen, OWS_ERR_ARG, "%s is not a loopback address: its "
                          "connection must be encrypted (CURVE). Open it with the daemon's "
                          "connection file (ows_open_connection_file), copied from its "
                          "machine: it holds the daemon's public key and your key pair", ep);
    cJSON *settings = cJSON_Parse(settings_json);
    if (!cJSON_IsObject(settings)) {
        cJSON_Delete(settings);
        return open_error(err, errlen, OWS_ERR_ARG, "settings_json is not a JSON object");
    }
    ows_stream *s = calloc(1, sizeof *s);
    if (!s) {
        cJSON_Delete(settings);
        return open_error(err, errlen, OWS_ERR_SYSTEM, "out of memory");
    }
    snprintf(s->endpoint, sizeof s->endpoint, "%s", ep);
    snprintf(s->token, sizeof s->token, "%s", tok);
    if (keys) {
        s->curve = 1;
        s->keys = *keys;
    }
    s->claimed_slot = -1;
    s->err_flag = &s->no_flag;
    s->last_heard = now_s();
    s->ctx = zmq_ctx_new();
    s->sock = s->ctx ? zmq_socket(s->ctx, ZMQ_DEALER) : NULL;
    int zero = 0;
    char monitor[64];
    snprintf(monitor, sizeof monitor, "inproc://ows-auth-%p", (void *)s);
    if (s->sock) {
        zmq_setsockopt(s->sock, ZMQ_LINGER, &zero, sizeof zero);
        /* never block a send, never drop a reply: credits bound what is in flight */
        zmq_setsockopt(s->sock, ZMQ_SNDHWM, &zero, sizeof zero);
        zmq_setsockopt(s->sock, ZMQ_RCVHWM, &zero, sizeof zero);
        if (authenticate(s, s->sock) < 0) {
            int rc = open_error(err, errlen, OWS_ERR_SYSTEM, "cannot set the %s credentials: %s",
                                s->curve ? "CURVE" : "PLAIN", zmq_strerror(zmq_errno()));
            cJSON_Delete(settings);
            release_stream(s);
            return rc;
        }
        if (zmq_socket_monitor(s->sock, monitor, ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                               ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) == 0) {
            s->auth_events = new_socket(s, ZMQ_PAIR);
            if (s->auth_events && zmq_connect(s->auth_events, monitor) < 0) {
                zmq_close(s->auth_events);
                s->auth_events = NULL;
            }
        }
    }
    if (!s->sock || zmq_connect(s->sock, ep) < 0) {
        int rc = open_error(err, errlen, OWS_ERR_SYSTEM, "cannot connect to %s: %s", ep,
                            zmq_strerror(zmq_errno()));
        cJSON_Delete(settings);
        release_stream(s);
        return rc;
    }
    cJSON *open = cJSON_CreateObject();
    cJSON_AddStringToObject(open, "type", "open");
    cJSON_AddNumberToObject(open, "version", 1);
    cJSON_AddNumberToObject(open, "minor", OWS_MINOR); /* 1.1: refused frames come back */
    cJSON_AddStringToObject(open, "token", tok);
    cJSON_AddStringToObject(open, "transport", transport == OWS_TRANSPORT_INLINE ? "inline" : "shm");
    char pidns[128] = "";
#if !defined(_WIN32)
    /* lets a daemon in our pid namespace watch our pid instead of waiting for heartbeats */
    ssize_t n = readlink("/proc/self/ns/pid", pidns, sizeof pidns - 1);
    pidns[n > 0 ? n : 0] = 0;
    cJSON_AddNumberToObject(open, "pid", getpid());
    cJSON_AddStringToObject(open, "pidns", pidns);
#endif
    cJSON_AddItemToObject(open, "settings", settings);
    int rc = send_json(s, open);
    cJSON_Delete(open);
    cJSON *opened = NULL;
    /* creating the dataset may take long (overwrite deletes the old one): wait while the
     * daemon lives */
    if (rc == OWS_OK) rc = await_reply(s, "opened", 0, &opened);
    stop_auth_events(s);
    if (rc != OWS_OK) {
        snprintf(err, errlen, "%s", s->error);
        release_stream(s);
        return rc;
    }
    s->sid = (int)num_field(opened, "stream", -1);
    s->daemon_minor = (int)num_field(opened, "minor", 0); /* absent: a 1.0 daemon */
    s->credits = (int)num_field(opened, "credits", 0);
    s->frame_nbytes = (size_t)num_field(opened, "frame_nbytes", 0);
    if (s->daemon_minor >= 1) /* fixed-type fields (1.1) */
        s->total = cJSON_IsTrue(cJSON_GetObjectItem(opened, "unbounded"))
                       ? -1 : (int64_t)num_field(opened, "frames_declared", -1);
    else
        s->total = cJSON_IsNumber(cJSON_GetObjectItem(opened, "frames"))
                       ? (int64_t)num_field(opened, "frames", -1) : -1;
    const char *policy = str_field(opened, "backpressure", "block");
    s->policy = policy[0];
    s->block_timeout = num_field(opened, "backpressure_timeout", 10.0);
    if (pidns[0] && !strcmp(str_field(opened, "pidns", ""), pidns))
        s->daemon_pid = (int)num_field(opened, "pid", 0);
    s->inline_mode = !strcmp(str_field(opened, "transport", ""), "inline");
    /* 1.1: ring_name ("" inline); a 1.0 daemon names the ring in the ring object */
    const char *ring_name = s->daemon_minor >= 1 ? str_field(opened, "ring_name", NULL)
                                                 : str_field(cJSON_GetObjectItem(opened, "ring"),
                                                             "name", NULL);
    if (s->credits <= 0 || s->frame_nbytes == 0) {
        rc = fail(s, OWS_ERR_DAEMON, "opened: %d credits, %zu-byte frames", s->credits,
                  s->frame_nbytes);
    } else {
        s->busy = calloc((size_t)s->credits, 1);
        s->scratch = malloc(s->frame_nbytes);
        s->nfree = s->credits;
        rc = (!s->busy || !s->scratch) ? fail(s, OWS_ERR_SYSTEM, "out of memory") : OWS_OK;
    }
#if OWS_HAVE_SHM
    if (rc == OWS_OK && !s->inline_mode) rc = attach_ring(s, ring_name);
#else
    (void)ring_name;
    if (rc == OWS_OK && !s->inline_mode)
        rc = fail(s, OWS_ERR_DAEMON, "the daemon opened a shared-memory stream");
#endif
    if (rc == OWS_OK && !strcmp(str_field(opened, "liveness", "pid"), "heartbeat"))
        rc = start_heartbeat(s, opened);
    cJSON_Delete(opened);
    if (rc != OWS_OK) {
        snprintf(err, errlen, "%s", s->error);
        if (s->sid > 0) abandon(s);
        release_stream(s);
        return rc;
    }
    *out = s;
    return OWS_OK;
}

ows_stream *ows_open(const char *endpoint, const char *token, const char *settings_json,
                     int transport, char *err, size_t errlen) {
    ows_stream *s = NULL;
    ows_open_ex(endpoint, token, settings_json, transport, &s, err, errlen);
    return s;
}

/* The stream can take a frame: not closed, no daemon-side error, the daemon alive. */
static int check_usable(ows_stream *s) {
    if (s->closed) return fail(s, OWS_ERR_CLOSED, "the stream is closed");
    if (*s->err_flag && !s->remote_code) {
        /* the daemon sent its reason just before it raised the flag: wait for it while the
         * daemon lives and answers */
        double start = now_s();
        while (!s->remote_code) {
            cJSON_Delete(pump(s, OWS_LIVENESS_MS, NULL));
            if (s->remote_code) break;
            int rc = check_daemon(s);
            if (rc != OWS_OK) return rc;
            if (now_s() - start > OWS_HUNG_TIMEOUT)
                remote_fail(s, *s->err_flag == 2 ? OWS_ERR_DAEMON_GONE : OWS_ERR_DAEMON,
                            "the daemon flagged the stream as %s (ring error flag %u) but sent "
                            "no reason within %.0f s", *s->err_flag == 2 ? "ended" : "failed",
                            (unsigned)*s->err_flag, OWS_HUNG_TIMEOUT);
        }
    }
    if (!s->remote_code && now_s() >= s->next_liveness) {
        cJSON_Delete(pump(s, 0, NULL)); /* releases, pongs, errors */
        if (!s->remote_code) return check_daemon(s);
    }
    if (s->remote_code) {
        snprintf(s->error, sizeof s->error, "%s", s->remote_msg);
        return s->remote_code;
    }
    return OWS_OK;
}

/* A free slot in *slot, or OWS_DROPPED / an error per the backpressure policy. A frame
 * prefers the slot after the previous frame's, else the first free one after that (as the
 * Python client does): consecutive frames then lie in consecutive slots, and the daemon can
 * write a chunk of several frames straight from the ring, also once slots came back out of
 * order (preferring n % credits then scattered the frames, and each chunk was copied). */
static int take_slot(ows_stream *s, int *slot) {
    if (!s->nfree) cJSON_Delete(pump(s, 0, NULL));
    if (!s->nfree) {
        if (s->policy == 'd') return OWS_DROPPED;
        if (s->policy == 'r')
            return fail(s, OWS_ERR_RING_FULL, "frame %lld: all %d ring slots are in use",
                        (long long)s->seq, s->credits);
        double deadline = now_s() + s->block_timeout;
        while (!s->nfree) {
            double left = deadline - now_s();
            if (left <= 0)
                return fail(s, OWS_ERR_RING_FULL, "frame %lld: no ring slot came free within "
                            "%.1f s", (long long)s->seq, s->block_timeout);
            long ms = (long)(1000 * left);
            cJSON_Delete(pump(s, ms < OWS_LIVENESS_MS ? ms : OWS_LIVENESS_MS, NULL));
            if (s->remote_code) {
                snprintf(s->error, sizeof s->error, "%s", s->remote_msg);
                return s->remote_code;
            }
            if (!s->nfree) {
                int rc = check_daemon(s);
                if (rc != OWS_OK) return rc;
            }
        }
    }
    int pref = s->next_slot;
    if (s->busy[pref]) { /* the first free one after it, else from the start: there is one */
        unsigned char *p = memchr(s->busy + pref, 0, (size_t)(s->credits - pref));
        if (!p) p = memchr(s->busy, 0, (size_t)s->credits);
        pref = (int)(p - s->busy);
    }
    s->busy[pref] = 1;
    s->nfree--;
    s->next_slot = pref + 1 < s->credits ? pref + 1 : 0;
    *slot = pref;
    return OWS_OK;
}

static void give_back(ows_stream *s, int slot) {
    s->busy[slot] = 0;
    s->nfree++;
    s->next_slot = slot; /* the next frame takes it: the run of slots stays unbroken */
}

/* The checks every frame passes (stream usable, nothing claimed, room left), then a slot. */
static int next_slot(ows_stream *s, int *slot) {
    int rc = check_usable(s);
    if (rc != OWS_OK) return rc;
    if (s->claimed_slot != -1) return fail(s, OWS_ERR_CLAIMED, "a claimed slot is not committed");
    if (s->total >= 0 && s->seq >= s->total)
        return fail(s, OWS_ERR_TOO_MANY, "frame %lld: the acquisition declares %lld frames",
                    (long long)s->seq, (long long)s->total);
    return take_slot(s, slot);
}

static int send_frame(ows_stream *s, int slot, const char *meta_json, const void *payload) {
    char header[256];
    char *dynamic = NULL;
    const char *text = header;
    meta_json = nonempty(meta_json);
    if (meta_json && strlen(meta_json) > OWS_MAX_META_BYTES) {
        give_back(s, slot);
        return fail(s, OWS_ERR_ARG, "frame %lld: meta_json is %zu bytes: at most %d bytes of "
                    "metadata may go with one frame", (long long)s->seq, strlen(meta_json),
                    OWS_MAX_META_BYTES);
    }
    if (meta_json) {
        cJSON *meta = cJSON_Parse(meta_json);
        if (!cJSON_IsObject(meta)) {
            cJSON_Delete(meta);
            give_back(s, slot);
            return fail(s, OWS_ERR_ARG, "frame %lld: meta_json is not a JSON object",
                        (long long)s->seq);
        }
        cJSON *h = cJSON_CreateObject();
        cJSON_AddStringToObject(h, "type", "frame");
        cJSON_AddNumberToObject(h, "stream", s->sid);
        cJSON_AddNumberToObject(h, "seq", (double)s->seq);
        cJSON_AddNumberToObject(h, "slot", slot);
        cJSON_AddItemToObject(h, "meta", meta);
        text = dynamic = cJSON_PrintUnformatted(h);
        cJSON_Delete(h);
        if (!text) {
            give_back(s, slot);
            return fail(s, OWS_ERR_SYSTEM, "out of memory");
        }
    } else {
        snprintf(header, sizeof header, "{\"type\":\"frame\",\"stream\":%d,\"seq\":%lld,\"slot\":%d}",
                 s->sid, (long long)s->seq, slot);
    }
#if OWS_HAVE_SHM
    /* the pixels in the slot are complete before the slot table names the frame (the daemon
     * writes a frame it finds there if this process dies before the notice leaves: PROTOCOL.md
     * 3.1), and before the daemon can learn of the frame */
    atomic_thread_fence(memory_order_release);
    if (!s->inline_mode) s->filled[slot] = (uint64_t)s->seq + 1;
#endif
    int rc = send_msg(s->sock, text, payload, s->frame_nbytes, 0);
    cJSON_free(dynamic);
    if (rc < 0) {
#if OWS_HAVE_SHM
        if (!s->inline_mode) s->filled[slot] = 0; /* not sent: not a frame */
#endif
        give_back(s, slot);
        return fail(s, OWS_ERR_SYSTEM, "frame %lld: zmq send: %s", (long long)s->seq,
                    zmq_strerror(zmq_errno()));
    }
    s->seq++;
    return OWS_OK;
}

int ows_append(ows_stream *s, const void *frame, size_t nbytes, const char *meta_json) {
    if (!s) return OWS_ERR_ARG;
    if (!frame) return fail(s, OWS_ERR_ARG, "frame %lld: frame is NULL", (long long)s->seq);
    if (nbytes != s->frame_nbytes)
        return fail(s, OWS_ERR_FRAME_SIZE, "frame %lld: %zu bytes, the stream's frames are %zu",
                    (long long)s->seq, nbytes, s->frame_nbytes);
    int slot;
    int rc = next_slot(s, &slot);
    if (rc == OWS_DROPPED) {
        s->seq++;
        s->dropped++;
        return OWS_DROPPED;
    }
    if (rc != OWS_OK) return rc;
    if (s->inline_mode) return done_or_refused(s, send_frame(s, slot, meta_json, frame));
    memcpy(s->ring + s->header_size + (size_t)slot * s->slot_size, frame, nbytes);
    return done_or_refused(s, send_frame(s, slot, meta_json, NULL));
}

int ows_claim(ows_stream *s, void **slot_ptr) {
    if (!s) return OWS_ERR_ARG;
    if (!slot_ptr) return fail(s, OWS_ERR_ARG, "slot is NULL");
    *slot_ptr = NULL;
    int slot;
    int rc = next_slot(s, &slot);
    if (rc == OWS_DROPPED) {
        s->claimed_slot = -2;
        *slot_ptr = s->scratch;
        return OWS_DROPPED;
    }
    if (rc != OWS_OK) return rc;
    s->claimed_slot = slot;
    *slot_ptr = s->inline_mode ? s->scratch : s->ring + s->header_size + (size_t)slot * s->slot_size;
    return OWS_OK;
}

int ows_commit(ows_stream *s, const char *meta_json) {
    if (!s) return OWS_ERR_ARG;
    if (s->claimed_slot == -1) return fail(s, OWS_ERR_ARG, "nothing claimed to commit");
    int slot = s->claimed_slot;
    s->claimed_slot = -1;
    if (slot == -2) {
        s->seq++;
        s->dropped++;
        return OWS_DROPPED;
    }
    return done_or_refused(s, send_frame(s, slot, meta_json, s->inline_mode ? s->scratch : NULL));
}

int ows_skip(ows_stream *s, int64_t frames) {
    if (!s) return OWS_ERR_ARG;
    if (frames < 0) return fail(s, OWS_ERR_ARG, "skip(%lld): negative", (long long)frames);
    int rc = check_usable(s);
    if (rc != OWS_OK) return rc;
    if (s->claimed_slot != -1) return fail(s, OWS_ERR_CLAIMED, "a claimed slot is not committed");
    if (s->total >= 0 && s->seq + frames > s->total)
        return fail(s, OWS_ERR_TOO_MANY, "skip(%lld) passes the %lld frames declared",
                    (long long)frames, (long long)s->total);
    char header[160];
    snprintf(header, sizeof header, "{\"type\":\"skip\",\"stream\":%d,\"seq\":%lld,\"count\":%lld}",
             s->sid, (long long)s->seq, (long long)frames);
    if (send_msg(s->sock, header, NULL, 0, 0) < 0)
        return fail(s, OWS_ERR_SYSTEM, "zmq send: %s", zmq_strerror(zmq_errno()));
    s->seq += frames;
    return done_or_refused(s, OWS_OK);
}

static int copy_out(ows_stream *s, const cJSON *h, char *out, size_t len) {
    if (!out || !len) return OWS_OK;
    char *text = cJSON_PrintUnformatted(h);
    if (!text) {
        out[0] = 0;
        return fail(s, OWS_ERR_SYSTEM, "out of memory");
    }
    snprintf(out, len, "%s", text);
    cJSON_free(text);
    return OWS_OK;
}

int ows_status(ows_stream *s, char *json_out, size_t len) {
    if (!s) return OWS_ERR_ARG;
    if (json_out && len) json_out[0] = 0;
    if (s->closed) return fail(s, OWS_ERR_CLOSED, "the stream is closed");
    /* the daemon ended the stream itself (shutdown, `closed`): it answers no status now */
    if (s->final_report || s->remote_code == OWS_ERR_DAEMON_GONE) {
        snprintf(s->error, sizeof s->error, "%s", s->remote_msg);
        return OWS_ERR_DAEMON_GONE;
    }
    char header[96];
    snprintf(header, sizeof header, "{\"type\":\"status\",\"stream\":%d}", s->sid);
    if (send_msg(s->sock, header, NULL, 0, 0) < 0)
        return fail(s, OWS_ERR_SYSTEM, "zmq send: %s", zmq_strerror(zmq_errno()));
    cJSON *reply;
    int rc = await_reply(s, "status_reply", OWS_STATUS_TIMEOUT, &reply);
    if (rc != OWS_OK) return rc;
    rc = copy_out(s, reply, json_out, len);
    cJSON_Delete(reply);
    return rc;
}

int ows_close(ows_stream *s, char *report_json, size_t len) {
    if (!s) return OWS_ERR_ARG;
    if (report_json && len) report_json[0] = 0;
    s->closed = 1;
    cJSON *report = NULL;
    int rc = OWS_OK;
    if (!s->final_report) cJSON_Delete(pump(s, 0, NULL)); /* a `closed` may be waiting */
    if (s->final_report) { /* the daemon finalized the stream on its own (shutdown) */
        report = s->final_report;
        s->final_report = NULL;
        snprintf(s->error, sizeof s->error, "%s", s->remote_msg);
        rc = OWS_ERR_DAEMON_GONE;
    } else {
        char header[128];
        snprintf(header, sizeof header, "{\"type\":\"close\",\"stream\":%d,\"frames\":%lld}",
                 s->sid, (long long)s->seq);
        rc = send_msg(s->sock, header, NULL, 0, 0) < 0
                 ? fail(s, OWS_ERR_SYSTEM, "zmq send: %s", zmq_strerror(zmq_errno()))
                 : OWS_OK;
        if (rc == OWS_OK) rc = await_reply(s, "closed", 0, &report);
    }
    if (report) {
        if (rc == OWS_OK && cJSON_GetArraySize(cJSON_GetObjectItem(report, "errors")) > 0) {
            const cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItem(report, "errors"), 0);
            rc = fail(s, OWS_ERR_DAEMON, "daemon: %s", cJSON_IsString(first)
                                                           ? first->valuestring : "write failed");
        } else if (rc == OWS_OK && s->remote_code) { /* a frame a 1.0 daemon refused */
            snprintf(s->error, sizeof s->error, "%s", s->remote_msg);
            rc = s->remote_code;
        } else if (rc == OWS_OK && s->refused) { /* frames the daemon refused (1.1) */
            snprintf(s->error, sizeof s->error, "%s", s->first_refusal);
            rc = OWS_ERR_DAEMON;
        }
        /* the stream is freed below: the message travels in the report ("" when all went
         * well: a field of one type, for LabVIEW's Unflatten From JSON) */
        cJSON_AddStringToObject(report, "error", rc == OWS_OK ? "" : s->error);
        copy_out(s, report, report_json, len);
        cJSON_Delete(report);
    } else { /* the stream is freed below: its error travels in the report */
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "error", s->error);
        copy_out(s, e, report_json, len);
        cJSON_Delete(e);
    }
    release_stream(s);
    return rc;
}
