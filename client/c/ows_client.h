/*
 * ows_client — C client of the ome-writers-service writer daemon (protocol OWS1, see
 * PROTOCOL.md). Streams camera frames to the daemon, which writes OME-Zarr v0.5 / OME-TIFF.
 *
 * Usage:
 *     char err[512];
 *     ows_stream *s = ows_open(NULL, NULL, settings_json, OWS_TRANSPORT_SHM, err, sizeof err);
 *     for (...) ows_append(s, pixels, nbytes, NULL);          // memcpy + one small send
 *     ows_close(s, report, sizeof report);                      // waits until all is on disk
 *
 * Threads: a stream is not thread-safe — call its functions from one thread at a time.
 * Different streams may be used from different threads. A background thread per stream
 * sends heartbeats only when the daemon asks for them (client in another pid namespace).
 *
 * Blocking: ows_append / ows_claim return at once while a ring slot is free. When none is,
 * they apply the stream's backpressure policy from its settings: "block" waits up to
 * backpressure_timeout seconds (then OWS_ERR_RING_FULL), "drop" drops the frame and returns
 * OWS_DROPPED, "raise" returns OWS_ERR_RING_FULL at once. ows_open, ows_status and
 * ows_close wait for the daemon's reply; all waits end with OWS_ERR_DAEMON_GONE if the daemon
 * dies or stays silent for 5 s.
 *
 * Errors: functions return OWS_OK (0) or a negative OWS_ERR_* code; ows_last_error(s) gives
 * the message (the daemon's own text for OWS_ERR_DAEMON). A daemon-side write error (disk
 * full...) is reported by the next call on the stream.
 *
 * Memory: ows_open returns a stream that ows_close frees (also on error; then the report
 * holds {"error": "..."}).
 */
#ifndef OWS_CLIENT_H
#define OWS_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define OWS_API __declspec(dllexport)
#else
#define OWS_API __attribute__((visibility("default")))
#endif

enum {
    OWS_OK = 0,
    OWS_DROPPED = 1,            /* backpressure "drop": the frame was dropped and counted */
    OWS_ERR_ARG = -1,           /* a bad argument (NULL, wrong size...) */
    OWS_ERR_DAEMON = -2,        /* the daemon refused or failed; see ows_last_error */
    OWS_ERR_DAEMON_GONE = -3,   /* the daemon died or does not answer */
    OWS_ERR_RING_FULL = -4,     /* no free slot (policy "raise", or "block" timed out) */
    OWS_ERR_FRAME_SIZE = -5,    /* nbytes differs from the stream's frame size */
    OWS_ERR_TOO_MANY = -6,      /* more frames than the settings declare */
    OWS_ERR_CLOSED = -7,        /* the stream was closed */
    OWS_ERR_SYSTEM = -8,        /* zmq, shared memory or memory allocation failed */
    OWS_ERR_CLAIMED = -9        /* a claimed slot was not committed yet */
};

enum { OWS_TRANSPORT_SHM = 0, OWS_TRANSPORT_INLINE = 1 };

typedef struct ows_stream ows_stream;

/* Open a stream. endpoint/token NULL: read the local daemon's connection file
 * ($OME_WRITERS_SERVICE_RUNTIME_DIR, else $XDG_RUNTIME_DIR/ome-writers-service-UID, else
 * /tmp/ome-writers-service-UID, file daemon.json). settings_json: AcquisitionSettings as
 * JSON (PROTOCOL.md §4). On failure returns NULL and writes the reason to err. */
OWS_API ows_stream *ows_open(const char *endpoint, const char *token, const char *settings_json,
                             int transport, char *err, size_t errlen);

/* Copy one frame (nbytes must equal ows_frame_nbytes) into a free slot and notify the
 * daemon. meta_json: NULL or a JSON object of per-frame metadata ({"delta_t": 0.5, ...}). */
OWS_API int ows_append(ows_stream *s, const void *frame, size_t nbytes, const char *meta_json);

/* Zero-copy: *slot receives a pointer to the next free slot (ows_frame_nbytes bytes); fill it,
 * then ows_commit() sends it. OWS_DROPPED: policy "drop" and the ring is full — *slot points
 * to a scratch buffer, and ows_commit() counts the frame as dropped. */
OWS_API int ows_claim(ows_stream *s, void **slot);
OWS_API int ows_commit(ows_stream *s, const char *meta_json);

/* Skip frames (they keep the fill value). */
OWS_API int ows_skip(ows_stream *s, int64_t frames);

/* The daemon's status of this stream as JSON (frames_written, backlog, rate_fps, ...). */
OWS_API int ows_status(ows_stream *s, char *json_out, size_t len);

/* Wait until every frame is written and the metadata final; report_json (may be NULL)
 * receives the final report. Frees the stream. Returns OWS_ERR_DAEMON if any frame could
 * not be written. */
OWS_API int ows_close(ows_stream *s, char *report_json, size_t len);

OWS_API size_t ows_frame_nbytes(const ows_stream *s);
OWS_API int64_t ows_frames_sent(const ows_stream *s);
OWS_API int64_t ows_frames_dropped(const ows_stream *s);
OWS_API const char *ows_last_error(const ows_stream *s);

#ifdef __cplusplus
}
#endif
#endif /* OWS_CLIENT_H */
