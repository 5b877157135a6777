/* ows_client.c — see ows_client.h and PROTOCOL.md. Depends on libzmq and cJSON. */
#define _GNU_SOURCE
#include "ows_client.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define TAG "OWS1"
#define TAG_LEN 4
#define LIVENESS_INTERVAL 0.25 /* s between daemon pid checks */
#define PING_AFTER 1.0         /* s of silence before a blocked call pings */
#define HUNG_TIMEOUT 5.0       /* s of silence before the daemon counts as gone */
#define REPLY_TIMEOUT 30.0     /* s to wait for open / status replies */

struct ows_stream {
    void *ctx;
    void *sock;
    char endpoint[512];
    int sid;
    int64_t seq, dropped, total; /* total < 0: unbounded */
    size_t frame_nbytes;
    int credits;
    int *free_slots;
    int nfree;
    int inline_mode;
    unsigned char *ring;
    size_t ring_size, header_size, slot_size;
    volatile uint32_t *err_flag;
    uint32_t no_flag;
    int daemon_pid;
    double next_liveness, last_heard, last_ping;
    char policy; /* 'b'lock, 'd'rop, 'r'aise */
    double block_timeout;
    int claimed_slot; /* -1: none, -2: scratch (dropped) */
    unsigned char *scratch;
    int closed;
    int remote_error; /* the daemon reported an error: the next call fails */
    char error[1024];
    /* heartbeat thread, only when the daemon cannot watch our pid */
    pthread_t hb;
    int hb_running;
    atomic_int hb_stop;
    char hb_msg[160];
    double hb_interval;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int fail(ows_stream *s, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->error, sizeof s->error, fmt, ap);
    va_end(ap);
    return code;
}

const char *ows_last_error(const ows_stream *s) { return s ? s->error : "no stream"; }
size_t ows_frame_nbytes(const ows_stream *s) { return s ? s->frame_nbytes : 0; }
int64_t ows_frames_sent(const ows_stream *s) { return s ? s->seq : 0; }
int64_t ows_frames_dropped(const ows_stream *s) { return s ? s->dropped : 0; }

/* ---------------------------------------------------------------- messages */

static int send_header(void *sock, const char *header, const void *payload, size_t nbytes) {
    if (zmq_send(sock, TAG, TAG_LEN, ZMQ_SNDMORE) < 0) return -1;
    if (zmq_send(sock, header, strlen(header), payload ? ZMQ_SNDMORE : 0) < 0) return -1;
    if (payload && zmq_send(sock, payload, nbytes, 0) < 0) return -1;
    return 0;
}

static int send_json(ows_stream *s, cJSON *obj) {
    char *text = cJSON_PrintUnformatted(obj);
    if (!text) return fail(s, OWS_ERR_SYSTEM, "out of memory");
    int rc = send_header(s->sock, text, NULL, 0);
    free(text);
    return rc < 0 ? fail(s, OWS_ERR_SYSTEM, "zmq send: %s", zmq_strerror(zmq_errno())) : OWS_OK;
}

/* Receive one message if one arrives within timeout_ms; *out = its header (caller frees). */
static int recv_one(ows_stream *s, long timeout_ms, cJSON **out) {
    zmq_pollitem_t item = {s->sock, 0, ZMQ_POLLIN, 0};
    *out = NULL;
    if (zmq_poll(&item, 1, timeout_ms) <= 0) return 0;
    zmq_msg_t part;
    int index = 0, more = 1, bad = 0;
    while (more) {
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, s->sock, 0) < 0) {
            zmq_msg_close(&part);
            return fail(s, OWS_ERR_SYSTEM, "zmq recv: %s", zmq_strerror(zmq_errno()));
        }
        if (index == 0 && (zmq_msg_size(&part) != TAG_LEN || memcmp(zmq_msg_data(&part), TAG, 4)))
            bad = 1;
        if (index == 1 && !bad) {
            *out = cJSON_ParseWithLength(zmq_msg_data(&part), zmq_msg_size(&part));
        }
        more = zmq_msg_more(&part);
        zmq_msg_close(&part);
        index++;
    }
    s->last_heard = now_s();
    if (bad || !*out || !cJSON_IsString(cJSON_GetObjectItem(*out, "type"))) {
        cJSON_Delete(*out);
        *out = NULL;
        return fail(s, OWS_ERR_DAEMON, "malformed message from the daemon");
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

/* Handle every waiting message (the first waited for up to timeout_ms). Releases refill the
 * free list; errors are remembered. Returns the last other message (caller frees) or NULL. */
static cJSON *pump(ows_stream *s, long timeout_ms) {
    cJSON *reply = NULL, *h = NULL;
    long wait = timeout_ms;
    while (recv_one(s, wait, &h) > 0) {
        wait = 0;
        const char *type = type_of(h);
        if (!strcmp(type, "release")) {
            const cJSON *slot;
            cJSON_ArrayForEach(slot, cJSON_GetObjectItem(h, "slots")) {
                if (cJSON_IsNumber(slot) && s->nfree < s->credits)
                    s->free_slots[s->nfree++] = slot->valueint;
            }
            cJSON_Delete(h);
            continue;
        }
        if (!strcmp(type, "error")) {
            s->remote_error = 1;
            fail(s, OWS_ERR_DAEMON, "daemon: %s (%s)", str_field(h, "message", "?"),
                 str_field(h, "code", "?"));
        } else if (!strcmp(type, "closed") && !s->closed) {
            s->remote_error = 1;
            fail(s, OWS_ERR_DAEMON_GONE, "the daemon closed the stream (%s)",
                 str_field(h, "reason", "?"));
        }
        cJSON_Delete(reply);
        reply = h;
    }
    return reply;
}

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

static int daemon_alive(ows_stream *s) {
    s->next_liveness = now_s() + LIVENESS_INTERVAL;
    if (s->daemon_pid > 0 && !pid_running(s->daemon_pid))
        return fail(s, OWS_ERR_DAEMON_GONE, "the writer daemon (pid %d) is gone",
                    s->daemon_pid);
    return OWS_OK;
}

/* While blocked: ping a silent daemon, give up after HUNG_TIMEOUT of silence. */
static int responsive(ows_stream *s) {
    double t = now_s(), silent = t - s->last_heard;
    if (silent > HUNG_TIMEOUT)
        return fail(s, OWS_ERR_DAEMON_GONE, "the daemon at %s has not answered for %.1f s",
                    s->endpoint, silent);
    if (silent > PING_AFTER && t - s->last_ping > PING_AFTER) {
        s->last_ping = t;
        send_header(s->sock, "{\"type\":\"ping\"}", NULL, 0);
    }
    return OWS_OK;
}

/* Wait for a reply of the given type; *out receives it (caller frees). */
static int await_reply(ows_stream *s, const char *type, double timeout, cJSON **out) {
    double deadline = timeout > 0 ? now_s() + timeout : 0;
    *out = NULL;
    for (;;) {
        cJSON *h = pump(s, (long)(LIVENESS_INTERVAL * 1000));
        if (h) {
            if (!strcmp(type_of(h), type)) {
                *out = h;
                return OWS_OK;
            }
            if (!strcmp(type_of(h), "error")) {
                cJSON_Delete(h);
                s->remote_error = 0; /* the error answers this call */
                return OWS_ERR_DAEMON;
            }
            cJSON_Delete(h);
        }
        int rc = daemon_alive(s);
        if (rc == OWS_OK) rc = responsive(s);
        if (rc != OWS_OK) return rc;
        if (deadline > 0 && now_s() > deadline)
            return fail(s, OWS_ERR_DAEMON_GONE, "no %s from the daemon within %.0f s", type,
                        timeout);
    }
}

/* ---------------------------------------------------------------- connection file, ring */

static int read_connection_file(char *endpoint, size_t elen, char *token, size_t tlen,
                                char *err, size_t errlen) {
    char dir[512], path[600];
    const char *rt = getenv("OME_WRITERS_SERVICE_RUNTIME_DIR");
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    if (rt) snprintf(dir, sizeof dir, "%s", rt);
    else if (xdg) snprintf(dir, sizeof dir, "%s/ome-writers-service-%u", xdg, (unsigned)getuid());
    else snprintf(dir, sizeof dir, "/tmp/ome-writers-service-%u", (unsigned)getuid());
    snprintf(path, sizeof path, "%s/daemon.json", dir);
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "no daemon: cannot read %s (%s)", path, strerror(errno));
        return -1;
    }
    char buf[4096];
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
    cJSON_Delete(info);
    return ok ? 0 : -1;
}

static int attach_ring(ows_stream *s, const cJSON *ring) {
    const char *name = str_field(ring, "name", NULL);
    if (!name) return fail(s, OWS_ERR_DAEMON, "opened: no ring name");
    int fd = shm_open(name, O_RDWR, 0);
    if (fd < 0) return fail(s, OWS_ERR_SYSTEM, "shm_open(%s): %s", name, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0) {
        close(fd);
        return fail(s, OWS_ERR_SYSTEM, "fstat(%s): %s", name, strerror(errno));
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return fail(s, OWS_ERR_SYSTEM, "mmap(%s): %s", name, strerror(errno));
    s->ring = p;
    s->ring_size = (size_t)st.st_size;
    uint32_t version, header;
    memcpy(&version, s->ring + 8, 4);
    memcpy(&header, s->ring + 12, 4);
    uint64_t slot_size;
    memcpy(&slot_size, s->ring + 24, 8);
    if (memcmp(s->ring, "OWSRING1", 8) || version != 1)
        return fail(s, OWS_ERR_DAEMON, "%s is not a version-1 frame ring", name);
    s->header_size = header;
    s->slot_size = (size_t)slot_size;
    s->err_flag = (volatile uint32_t *)(s->ring + 40);
    for (size_t off = s->header_size; off < s->ring_size; off += 4096)
        s->ring[off] = s->ring[off]; /* prefault: the first touch of a page is slow */
    return OWS_OK;
}

static void *heartbeat_main(void *arg) {
    ows_stream *s = arg;
    void *sock = zmq_socket(s->ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_connect(sock, s->endpoint);
    while (!atomic_load(&s->hb_stop)) {
        send_header(sock, s->hb_msg, NULL, 0);
        char drain[256];
        while (zmq_recv(sock, drain, sizeof drain, ZMQ_DONTWAIT) >= 0) {
        }
        usleep((useconds_t)(s->hb_interval * 1e6));
    }
    zmq_close(sock);
    return NULL;
}

static void release_stream(ows_stream *s) {
    if (s->hb_running) {
        atomic_store(&s->hb_stop, 1);
        pthread_join(s->hb, NULL);
    }
    if (s->ring) munmap(s->ring, s->ring_size);
    if (s->sock) zmq_close(s->sock);
    if (s->ctx) zmq_ctx_term(s->ctx);
    free(s->free_slots);
    free(s->scratch);
    free(s);
}

/* ---------------------------------------------------------------- public API */

ows_stream *ows_open(const char *endpoint, const char *token, const char *settings_json,
                     int transport, char *err, size_t errlen) {
    char ep[512], tok[256];
    if (!settings_json || !err) return NULL;
    if (!endpoint || !token) {
        if (read_connection_file(ep, sizeof ep, tok, sizeof tok, err, errlen) < 0) return NULL;
        if (endpoint) snprintf(ep, sizeof ep, "%s", endpoint);
        if (token) snprintf(tok, sizeof tok, "%s", token);
    } else {
        snprintf(ep, sizeof ep, "%s", endpoint);
        snprintf(tok, sizeof tok, "%s", token);
    }
    cJSON *settings = cJSON_Parse(settings_json);
    if (!settings) {
        snprintf(err, errlen, "settings_json is not valid JSON");
        return NULL;
    }
    ows_stream *s = calloc(1, sizeof *s);
    if (!s) {
        cJSON_Delete(settings);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    snprintf(s->endpoint, sizeof s->endpoint, "%s", ep);
    s->claimed_slot = -1;
    s->err_flag = &s->no_flag;
    s->last_heard = s->last_ping = now_s();
    s->ctx = zmq_ctx_new();
    s->sock = zmq_socket(s->ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(s->sock, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s->sock, ZMQ_SNDHWM, &zero, sizeof zero); /* credits bound the backlog */
    if (zmq_connect(s->sock, ep) < 0) {
        snprintf(err, errlen, "cannot connect to %s: %s", ep, zmq_strerror(zmq_errno()));
        cJSON_Delete(settings);
        release_stream(s);
        return NULL;
    }
    char pidns[128] = "";
    ssize_t n = readlink("/proc/self/ns/pid", pidns, sizeof pidns - 1);
    pidns[n > 0 ? n : 0] = 0;
    cJSON *open = cJSON_CreateObject();
    cJSON_AddStringToObject(open, "type", "open");
    cJSON_AddNumberToObject(open, "version", 1);
    cJSON_AddStringToObject(open, "token", tok);
    cJSON_AddStringToObject(open, "transport", transport == OWS_TRANSPORT_INLINE ? "inline" : "shm");
    cJSON_AddNumberToObject(open, "pid", getpid());
    cJSON_AddStringToObject(open, "pidns", pidns);
    cJSON_AddItemToObject(open, "settings", settings);
    int rc = send_json(s, open);
    cJSON_Delete(open);
    cJSON *opened = NULL;
    if (rc == OWS_OK) rc = await_reply(s, "opened", REPLY_TIMEOUT, &opened);
    if (rc != OWS_OK) {
        snprintf(err, errlen, "%s", s->error);
        release_stream(s);
        return NULL;
    }
    s->sid = (int)num_field(opened, "stream", -1);
    s->credits = (int)num_field(opened, "credits", 0);
    s->frame_nbytes = (size_t)num_field(opened, "frame_nbytes", 0);
    s->total = cJSON_IsNumber(cJSON_GetObjectItem(opened, "frames"))
                   ? (int64_t)num_field(opened, "frames", -1) : -1;
    const char *policy = str_field(opened, "backpressure", "block");
    s->policy = policy[0];
    s->block_timeout = num_field(opened, "backpressure_timeout", 10.0);
    if (!strcmp(str_field(opened, "pidns", "?"), pidns))
        s->daemon_pid = (int)num_field(opened, "pid", 0);
    s->free_slots = malloc(sizeof(int) * (size_t)(s->credits > 0 ? s->credits : 1));
    s->scratch = malloc(s->frame_nbytes ? s->frame_nbytes : 1);
    for (int i = s->credits - 1; i >= 0; i--) s->free_slots[s->nfree++] = i;
    const cJSON *ring = cJSON_GetObjectItem(opened, "ring");
    s->inline_mode = !cJSON_IsObject(ring);
    rc = (!s->free_slots || !s->scratch) ? fail(s, OWS_ERR_SYSTEM, "out of memory") : OWS_OK;
    if (rc == OWS_OK && !s->inline_mode) rc = attach_ring(s, ring);
    if (rc == OWS_OK && !strcmp(str_field(opened, "liveness", "pid"), "heartbeat")) {
        snprintf(s->hb_msg, sizeof s->hb_msg, "{\"type\":\"heartbeat\",\"stream\":%d,\"key\":\"%s\"}",
                 s->sid, str_field(opened, "heartbeat_key", ""));
        s->hb_interval = num_field(opened, "heartbeat_interval", 0.3);
        s->hb_running = pthread_create(&s->hb, NULL, heartbeat_main, s) == 0;
    }
    cJSON_Delete(opened);
    if (rc != OWS_OK) {
        snprintf(err, errlen, "%s", s->error);
        release_stream(s);
        return NULL;
    }
    return s;
}

static int check_usable(ows_stream *s) {
    if (s->closed) return fail(s, OWS_ERR_CLOSED, "the stream is closed");
    if (*s->err_flag || s->remote_error) {
        if (!s->remote_error) {
            cJSON_Delete(pump(s, 50)); /* fetch the daemon's message */
            if (!s->remote_error) fail(s, OWS_ERR_DAEMON, "the daemon reported an error");
        }
        return *s->err_flag == 2 ? OWS_ERR_DAEMON_GONE : OWS_ERR_DAEMON;
    }
    if (now_s() >= s->next_liveness) return daemon_alive(s);
    return OWS_OK;
}

/* A free slot in *slot, or OWS_DROPPED / an error per the backpressure policy. */
static int take_slot(ows_stream *s, int *slot) {
    if (!s->nfree) cJSON_Delete(pump(s, 0));
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
            cJSON_Delete(pump(s, (long)(1000 * (left < LIVENESS_INTERVAL ? left : LIVENESS_INTERVAL))));
            if (s->remote_error) return OWS_ERR_DAEMON;
            if (!s->nfree) {
                int rc = daemon_alive(s);
                if (rc == OWS_OK) rc = responsive(s);
                if (rc != OWS_OK) return rc;
            }
        }
    }
    *slot = s->free_slots[--s->nfree];
    return OWS_OK;
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
    if (meta_json) {
        cJSON *meta = cJSON_Parse(meta_json);
        if (!cJSON_IsObject(meta)) {
            cJSON_Delete(meta);
            s->free_slots[s->nfree++] = slot;
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
    } else {
        snprintf(header, sizeof header, "{\"type\":\"frame\",\"stream\":%d,\"seq\":%lld,\"slot\":%d}",
                 s->sid, (long long)s->seq, slot);
    }
    int rc = send_header(s->sock, text, payload, s->frame_nbytes);
    free(dynamic);
    if (rc < 0) return fail(s, OWS_ERR_SYSTEM, "zmq send: %s", zmq_strerror(zmq_errno()));
    s->seq++;
    return OWS_OK;
}

int ows_append(ows_stream *s, const void *frame, size_t nbytes, const char *meta_json) {
    if (!s || !frame) return OWS_ERR_ARG;
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
    if (s->inline_mode) return send_frame(s, slot, meta_json, frame);
    memcpy(s->ring + s->header_size + (size_t)slot * s->slot_size, frame, nbytes);
    return send_frame(s, slot, meta_json, NULL);
}

int ows_claim(ows_stream *s, void **slot_ptr) {
    if (!s || !slot_ptr) return OWS_ERR_ARG;
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
    if (!s || s->claimed_slot == -1) return OWS_ERR_ARG;
    int slot = s->claimed_slot;
    s->claimed_slot = -1;
    if (slot == -2) {
        s->seq++;
        s->dropped++;
        return OWS_DROPPED;
    }
    return send_frame(s, slot, meta_json, s->inline_mode ? s->scratch : NULL);
}

int ows_skip(ows_stream *s, int64_t frames) {
    if (!s || frames < 0) return OWS_ERR_ARG;
    int rc = check_usable(s);
    if (rc != OWS_OK) return rc;
    if (s->total >= 0 && s->seq + frames > s->total)
        return fail(s, OWS_ERR_TOO_MANY, "skip(%lld) passes the %lld frames declared",
                    (long long)frames, (long long)s->total);
    char header[160];
    snprintf(header, sizeof header, "{\"type\":\"skip\",\"stream\":%d,\"seq\":%lld,\"count\":%lld}",
             s->sid, (long long)s->seq, (long long)frames);
    if (send_header(s->sock, header, NULL, 0) < 0)
        return fail(s, OWS_ERR_SYSTEM, "zmq send: %s", zmq_strerror(zmq_errno()));
    s->seq += frames;
    return OWS_OK;
}

static int copy_out(ows_stream *s, const cJSON *h, char *out, size_t len) {
    if (!out || !len) return OWS_OK;
    char *text = cJSON_PrintUnformatted(h);
    if (!text) return fail(s, OWS_ERR_SYSTEM, "out of memory");
    snprintf(out, len, "%s", text);
    free(text);
    return OWS_OK;
}

int ows_status(ows_stream *s, char *json_out, size_t len) {
    if (!s) return OWS_ERR_ARG;
    if (s->closed) return fail(s, OWS_ERR_CLOSED, "the stream is closed");
    char header[96];
    snprintf(header, sizeof header, "{\"type\":\"status\",\"stream\":%d}", s->sid);
    if (send_header(s->sock, header, NULL, 0) < 0)
        return fail(s, OWS_ERR_SYSTEM, "zmq send: %s", zmq_strerror(zmq_errno()));
    cJSON *reply;
    int rc = await_reply(s, "status_reply", REPLY_TIMEOUT, &reply);
    if (rc != OWS_OK) return rc;
    rc = copy_out(s, reply, json_out, len);
    cJSON_Delete(reply);
    return rc;
}

int ows_close(ows_stream *s, char *report_json, size_t len) {
    if (!s) return OWS_ERR_ARG;
    char header[128];
    snprintf(header, sizeof header, "{\"type\":\"close\",\"stream\":%d,\"frames\":%lld}", s->sid,
             (long long)s->seq);
    s->closed = 1;
    int rc = send_header(s->sock, header, NULL, 0) < 0 ? OWS_ERR_SYSTEM : OWS_OK;
    cJSON *report = NULL;
    if (rc == OWS_OK) rc = await_reply(s, "closed", 0, &report);
    if (rc == OWS_OK) {
        copy_out(s, report, report_json, len);
        const cJSON *errors = cJSON_GetObjectItem(report, "errors");
        if (cJSON_GetArraySize(errors) > 0) rc = OWS_ERR_DAEMON;
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
