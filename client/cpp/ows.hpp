// ows.hpp — a small RAII wrapper around the C library (ows_client.h), protocol 1.1.
// ows::Stream opens in its constructor, closes (waiting for the daemon) in close() or its
// destructor, and turns error codes into ows::Error exceptions carrying the daemon's message.
// A frame the daemon refused (OWS_REFUSED, reported by a later call that succeeded) is no
// exception: its message is queued for take_refusals(), and the stream goes on.
// Like the C stream, an ows::Stream is movable but not thread-safe: calls must not overlap.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "ows_client.h"

namespace ows {

struct Error : std::runtime_error {
    int code;
    Error(int c, const std::string &what) : std::runtime_error(what), code(c) {}
};

class Stream {
  public:
    // endpoint / token empty: the local daemon's connection file.
    Stream(const std::string &settings_json, const std::string &endpoint = "",
           const std::string &token = "", bool inline_frames = false) {
        char err[1024];
        const int rc = ows_open_ex(endpoint.c_str(), token.c_str(), settings_json.c_str(),
                                   inline_frames ? OWS_TRANSPORT_INLINE : OWS_TRANSPORT_SHM, &s_,
                                   err, sizeof err);
        if (rc != OWS_OK) throw Error(rc, err);
    }
    // From a daemon's connection file (its CURVE keys for a daemon on another machine; empty:
    // the local daemon's); endpoint empty: the file's (see ows_open_connection_file).
    static Stream from_connection_file(const std::string &connection_file,
                                       const std::string &settings_json,
                                       const std::string &endpoint = "",
                                       bool inline_frames = false) {
        char err[1024];
        ows_stream *s = nullptr;
        const int rc = ows_open_connection_file(
            connection_file.c_str(), endpoint.c_str(), settings_json.c_str(),
            inline_frames ? OWS_TRANSPORT_INLINE : OWS_TRANSPORT_SHM, &s, err, sizeof err);
        if (rc != OWS_OK) throw Error(rc, err);
        return Stream(s);
    }
    Stream(const Stream &) = delete;
    Stream &operator=(const Stream &) = delete;
    Stream(Stream &&o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
    Stream &operator=(Stream &&o) noexcept {
        if (this != &o) {
            reset();
            s_ = std::exchange(o.s_, nullptr);
        }
        return *this;
    }
    ~Stream() { reset(); }

    // Copy a frame in; returns false when the frame was dropped (backpressure "drop").
    bool append(const void *frame, std::size_t nbytes, const char *meta_json = nullptr) {
        return check(ows_append(s_, frame, nbytes, meta_json));
    }

    // Zero-copy: a slot to fill, then commit(). With backpressure "drop" and a full ring the
    // pointer is a scratch buffer and commit() returns false (the frame is dropped).
    void *claim() {
        void *slot = nullptr;
        check(ows_claim(s_, &slot));
        return slot;
    }
    bool commit(const char *meta_json = nullptr) { return check(ows_commit(s_, meta_json)); }

    std::string status() {
        char buf[8192];
        check(ows_status(s_, buf, sizeof buf));
        return buf;
    }

    // Wait for every frame to be on disk; returns the final report (JSON).
    std::string close() {
        char buf[16384];
        int rc = ows_close(std::exchange(s_, nullptr), buf, sizeof buf);
        if (rc != OWS_OK) throw Error(rc, buf);
        return buf;
    }

    // Messages of the frames the daemon refused since the last call (each names its frame).
    std::vector<std::string> take_refusals() { return std::exchange(refusals_, {}); }

    std::size_t frame_nbytes() const { return ows_frame_nbytes(s_); }
    long long frames_refused() const { return ows_frames_refused(s_); }
    int daemon_minor() const { return ows_daemon_minor(s_); }  // 1: protocol 1.1
    long long frames_sent() const { return ows_frames_sent(s_); }
    long long frames_dropped() const { return ows_frames_dropped(s_); }

  private:
    explicit Stream(ows_stream *s) noexcept : s_(s) {}
    void reset() noexcept {
        if (s_) ows_close(std::exchange(s_, nullptr), nullptr, 0);  // call close() to see errors
    }
    bool check(int rc) {
        if (rc == OWS_DROPPED) return false;
        if (rc == OWS_REFUSED) {  // this call's work is done; an earlier frame was refused
            refusals_.emplace_back(ows_last_error(s_));
            return true;
        }
        if (rc != OWS_OK) throw Error(rc, s_ ? ows_last_error(s_) : "the stream is closed");
        return true;
    }
    ows_stream *s_ = nullptr;
    std::vector<std::string> refusals_;
};

}  // namespace ows
