/*
 * ows_client — C client of the ome-writers-service writer daemon (protocol 1.1, see
 * PROTOCOL.md; it talks to a 1.0 daemon too). Streams camera frames to the daemon, which
 * writes OME-Zarr v0.5 / OME-TIFF.
 *
 * Usage:
 *     char err[1024], report[16384];
 *     ows_stream *s = ows_open(NULL, NULL, settings_json, OWS_TRANSPORT_SHM, err, sizeof err);
 *     for (...) ows_append(s, pixels, nbytes, NULL);          // memcpy + one small send
 *     ows_close(s, report, sizeof report);                      // waits until all is on disk
 *
 * Errors: functions return OWS_OK (0), OWS_DROPPED (1), OWS_REFUSED (2) or a negative
 * OWS_ERR_* code; ows_last_error(s) gives the message of the last failure on the stream (for
 * OWS_ERR_DAEMON the daemon's own text, e.g. "daemon: invalid settings: ... (invalid_settings)").
 * ows_open_ex returns the code of a failed open, ows_open only NULL; both write the message to
 * err. A daemon-side write error (disk full...) arrives after the call that sent the frame
 * returned: the next call on the stream and ows_close report it (OWS_ERR_DAEMON), and the
 * stream takes no more frames. A frame the daemon refuses (e.g. metadata it cannot store) is
 * reported once, by the next ows_append / ows_commit / ows_skip that succeeds: it returns
 * OWS_REFUSED instead of OWS_OK (its own frame was sent), ows_last_error names the refused
 * frame and why; the stream goes on (the refused frame is a gap; its slot came back) and
 * ows_close returns OWS_ERR_DAEMON with the first refusal in the report. (With a 1.0 daemon,
 * ows_daemon_minor() == 0, a refusal fails every later call instead.) A daemon that shut
 * down (SIGTERM) finalizes the stream with what it received: the next call returns
 * OWS_ERR_DAEMON_GONE and ows_close hands back the daemon's final report.
 *
 * Blocking: ows_append / ows_claim return at once while a ring slot is free (a copy into
 * shared memory and one small message). When none is, they apply the stream's backpressure
 * policy from its settings: "block" waits up to backpressure_timeout seconds for the daemon to
 * release one (then OWS_ERR_RING_FULL), "drop" drops the frame and returns OWS_DROPPED,
 * "raise" returns OWS_ERR_RING_FULL at once. ows_open, ows_status and ows_close wait for the
 * daemon's reply (ows_close: until the dataset is finalized, however long that takes while
 * the daemon lives). No call waits forever: every wait ends with OWS_ERR_DAEMON_GONE when the
 * daemon's pid disappears (checked every 0.25 s when client and daemon share a pid namespace)
 * or when the daemon leaves a ping unanswered for 5 s (hung, killed in another container or
 * on another host, wrong endpoint). The frame path makes the same checks every 0.25 s without
 * waiting, so a dead daemon is reported by the next append.
 *
 * Threads: a stream is NOT thread-safe. Calls on one stream must not overlap; they may come
 * from different threads one after another (LabVIEW "Run in any thread" is fine when one
 * stream's calls are wired in sequence) — any synchronization that orders the calls (mutex,
 * queue, thread join, LabVIEW dataflow) suffices. Different streams are independent (each has
 * its own ZeroMQ context and socket) and may be used from different threads at the same time.
 * ows_last_error's text stays valid until the next call on the stream. When the daemon cannot
 * watch the client's pid (another pid namespace: containers; Windows) the library runs one
 * background thread per stream that only sends heartbeats on its own socket, so a stream
 * stays alive however long the caller waits between frames (a slow time-lapse).
 *
 * Ring memory model (transport shm): a slot handed out by ows_append / ows_claim is one the
 * daemon released (PROTOCOL.md §3): the daemon no longer reads it. The pixels are written
 * before the slot table names the frame and before the frame message is sent (release
 * fence), and a slot is reused only after its release message arrived (acquire fence). So a
 * frame whose ows_append / ows_commit returned is written even if this process dies at once,
 * before the message leaves it: the daemon finds the frame in the ring's slot table. The pointer from ows_claim is valid until
 * ows_commit; do not touch that memory afterwards — the daemon reads it. Frame n goes to slot
 * n % slots when that one is free, so that consecutive frames lie in consecutive slots (the
 * daemon can then write a chunk of several frames straight from the ring).
 *
 * Memory: ows_open returns a stream that ows_close frees, on success and on error (then the
 * report holds {"error": "..."}); every other call leaves it open. Strings passed in are
 * copied; nothing returned needs freeing.
 *
 * ABI (for LabVIEW's Call Library Function Node and other FFIs): plain C, calling convention
 * C (cdecl; OWS_CALL spells it out on 32-bit Windows), no struct passed or returned by value,
 * no callbacks. Types: int = int32, int64_t = int64, size_t = pointer-sized unsigned, the
 * stream = an opaque pointer-sized handle. String parameters are NUL-terminated UTF-8; an
 * empty string "" means the same as NULL for endpoint, token and meta_json.
 *
 * Platforms: Linux (shm and inline). On Windows there is no POSIX shared memory: build the
 * same file into a DLL (define OWS_BUILD_DLL) and use OWS_TRANSPORT_INLINE, which sends the
 * pixels inside the messages; OWS_TRANSPORT_SHM then fails with OWS_ERR_ARG.
 */
#ifndef OWS_CLIENT_H
#define OWS_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#if defined(OWS_BUILD_DLL)
#define OWS_API __declspec(dllexport)
#elif defined(OWS_STATIC)
#define OWS_API
#else
#define OWS_API __declspec(dllimport)
#endif
#define OWS_CALL __cdecl
#else
#define OWS_API __attribute__((visibility("default")))
#define OWS_CALL
#endif

enum {
    OWS_OK = 0,
    OWS_DROPPED = 1,            /* backpressure "drop": the frame was dropped and counted */
    OWS_REFUSED = 2,            /* done, but the daemon refused an earlier frame (see
                                   ows_last_error; that frame is a gap, the stream goes on) */
    OWS_ERR_ARG = -1,           /* a bad argument (NULL, invalid JSON, unsupported transport) */
    OWS_ERR_DAEMON = -2,        /* the daemon refused or failed; see ows_last_error */
    OWS_ERR_DAEMON_GONE = -3,   /* the daemon died, shut down or does not answer */
    OWS_ERR_RING_FULL = -4,     /* no free slot (policy "raise", or "block" timed out) */
    OWS_ERR_FRAME_SIZE = -5,    /* nbytes differs from the stream's frame size */
    OWS_ERR_TOO_MANY = -6,      /* more frames than the settings declare */
    OWS_ERR_CLOSED = -7,        /* the stream was closed */
    OWS_ERR_SYSTEM = -8,        /* zmq, shared memory or memory allocation failed */
    OWS_ERR_CLAIMED = -9        /* a claimed slot was not committed yet */
};

enum { OWS_TRANSPORT_SHM = 0, OWS_TRANSPORT_INLINE = 1 };

typedef struct ows_stream ows_stream;

/* Open a stream. endpoint/token NULL or "": read the local daemon's connection file
 * ($OME_WRITERS_SERVICE_RUNTIME_DIR, else $XDG_RUNTIME_DIR/ome-writers-service-UID, else
 * /tmp/ome-writers-service-UID, file daemon.json), with its CURVE keys if it has any.
 * settings_json: AcquisitionSettings as JSON (PROTOCOL.md §4). On failure returns NULL and
 * writes the reason to err (err may be NULL). Blocks until the daemon has created the
 * dataset. Security: an endpoint and token given here authenticate with PLAIN, which sends
 * the token in clear text, so only an ipc or loopback endpoint (127.0.0.0/8, ::1, localhost)
 * is accepted that way; any other is refused (OWS_ERR_ARG) before a connection is made:
 * open it with ows_open_connection_file, whose CURVE keys encrypt the connection. */
OWS_API ows_stream *OWS_CALL ows_open(const char *endpoint, const char *token,
                                      const char *settings_json, int transport, char *err,
                                      size_t errlen);

/* ows_open returning the error code: OWS_OK and *out = the stream, or a negative code
 * (OWS_ERR_DAEMON: refused, e.g. wrong token or invalid settings; OWS_ERR_DAEMON_GONE: no
 * daemon answers; OWS_ERR_ARG; OWS_ERR_SYSTEM) with *out = NULL and the reason in err. */
OWS_API int OWS_CALL ows_open_ex(const char *endpoint, const char *token,
                                 const char *settings_json, int transport, ows_stream **out,
                                 char *err, size_t errlen);

/* Open a stream on the daemon a connection file describes (its daemon.json, copied from the
 * daemon's machine for a remote client; NULL or "": the local daemon's, as ows_open finds
 * it). A daemon that encrypts (CURVE: any non-loopback endpoint, or `serve --curve`) lists
 * its public key and a client key pair there, and every connection then uses them; keep the
 * copy private (0600), as the daemon keeps its own. endpoint NULL or "": the file's;
 * otherwise the address this machine reaches the daemon by (e.g. "tcp://scope-pc:5555" for
 * a daemon bound to tcp://0.0.0.0:5555), with the file's token and keys. Codes as
 * ows_open_ex; OWS_ERR_ARG when the file cannot be read or is not a connection file. */
OWS_API int OWS_CALL ows_open_connection_file(const char *connection_file,
                                              const char *endpoint,
                                              const char *settings_json, int transport,
                                              ows_stream **out, char *err, size_t errlen);

/* Copy one frame (nbytes must equal ows_frame_nbytes) into a free slot and notify the
 * daemon; the caller's buffer is free again on return. meta_json: NULL, "" or a JSON object
 * of per-frame metadata ({"delta_t": 0.5, "exposure_time": 0.01, ...}, PROTOCOL.md §5; the
 * known keys take finite numbers, "index" and "storage_index" are reserved). */
OWS_API int OWS_CALL ows_append(ows_stream *s, const void *frame, size_t nbytes,
                                const char *meta_json);

/* Zero-copy: *slot receives a pointer to the next free slot (ows_frame_nbytes bytes; inline
 * transport: a private buffer); fill it, then ows_commit() sends it. OWS_DROPPED: policy
 * "drop" and the ring is full — *slot points to a scratch buffer, and ows_commit() counts
 * the frame as dropped. */
OWS_API int OWS_CALL ows_claim(ows_stream *s, void **slot);
OWS_API int OWS_CALL ows_commit(ows_stream *s, const char *meta_json);

/* Skip frames deliberately (they keep the fill value; not counted as dropped). */
OWS_API int OWS_CALL ows_skip(ows_stream *s, int64_t frames);

/* The daemon's status of this stream as JSON (frames_written, backlog, rate_fps, ...). */
OWS_API int OWS_CALL ows_status(ows_stream *s, char *json_out, size_t len);

/* Wait until every frame is written and the metadata final; report_json (may be NULL)
 * receives the final report (PROTOCOL.md §2.2 `closed`), truncated to len - 1 bytes. Frees
 * the stream (also on error). Returns OWS_ERR_DAEMON if any frame could not be written or
 * was refused, OWS_ERR_DAEMON_GONE if the daemon died (report: {"error": ...}) or had shut
 * down (report: its final report, reason "shutdown"). The report's "error" field holds the
 * message when it returns an error ("" on success; ows_last_error is gone with the stream). */
OWS_API int OWS_CALL ows_close(ows_stream *s, char *report_json, size_t len);

OWS_API size_t OWS_CALL ows_frame_nbytes(const ows_stream *s);
/* Frame numbers used so far (sent + dropped + skipped): the next frame's number. */
OWS_API int64_t OWS_CALL ows_frames_sent(const ows_stream *s);
OWS_API int64_t OWS_CALL ows_frames_dropped(const ows_stream *s);
/* Frames the daemon refused so far (each reported once by OWS_REFUSED). */
OWS_API int64_t OWS_CALL ows_frames_refused(const ows_stream *s);
/* The protocol minor version the daemon speaks: 1 (1.1), or 0 for a 1.0 daemon. */
OWS_API int OWS_CALL ows_daemon_minor(const ows_stream *s);
OWS_API const char *OWS_CALL ows_last_error(const ows_stream *s);

#ifdef __cplusplus
}
#endif
#endif /* OWS_CLIENT_H */
