// A simulated camera streaming a 5D acquisition (t, c, z, y, x) to the writer daemon at a
// fixed frame rate, writing straight into the ring (claim/commit). Prints the rate achieved
// (frame intervals between the first and the last frame handed over), the frames that came
// more than one period late, the frames dropped, and when everything was on disk.
// Pixel (y, x) of frame i is (i*7 + y*3 + x) & 0xFFFF. Without ENDPOINT/TOKEN it uses the
// local daemon's connection file ($OME_WRITERS_SERVICE_RUNTIME_DIR...).
//
//   camera_sim ROOT_PATH FPS T C Z SIZE [ENDPOINT TOKEN]
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "ows.hpp"

// A JSON string literal (quotes, backslashes and control characters escaped).
static std::string json_string(const std::string &text) {
    std::string out = "\"";
    for (const char ch : text) {
        const auto u = static_cast<unsigned char>(ch);
        if (ch == '"' || ch == '\\') {
            out += '\\';
            out += ch;
        } else if (u < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", u);
            out += buf;
        } else {
            out += ch;
        }
    }
    return out + "\"";
}

// frames_dropped of the final report (the daemon's count).
static long long stream_dropped(const std::string &report) {
    const auto at = report.find("\"frames_dropped\":");
    return at == std::string::npos ? -1 : std::atoll(report.c_str() + at + 17);
}

int main(int argc, char **argv) {
    if (argc != 7 && argc != 9) {
        std::fprintf(stderr, "usage: %s ROOT_PATH FPS T C Z SIZE [ENDPOINT TOKEN]\n", argv[0]);
        return 2;
    }
    const std::string root = argv[1];
    const double fps = std::atof(argv[2]);
    const int t = std::atoi(argv[3]), c = std::atoi(argv[4]), z = std::atoi(argv[5]);
    const int size = std::atoi(argv[6]);
    if (!(fps > 0) || t < 1 || c < 1 || z < 1 || size < 1) {
        std::fprintf(stderr, "FPS, T, C, Z and SIZE must be positive\n");
        return 2;
    }
    const std::string endpoint = argc == 9 ? argv[7] : "", token = argc == 9 ? argv[8] : "";
    const std::string settings =
        "{\"root_path\": " + json_string(root) + ", \"dtype\": \"uint16\", \"overwrite\": true,"
        " \"dimensions\": ["
        "{\"name\": \"t\", \"count\": " + std::to_string(t) + "},"
        "{\"name\": \"c\", \"count\": " + std::to_string(c) + "},"
        "{\"name\": \"z\", \"count\": " + std::to_string(z) + ", \"scale\": 0.5, \"unit\": \"um\"},"
        "{\"name\": \"y\", \"count\": " + std::to_string(size) + "},"
        "{\"name\": \"x\", \"count\": " + std::to_string(size) + "}]}";
    try {
        ows::Stream stream(settings, endpoint, token);
        std::printf("protocol 1.%d\n", stream.daemon_minor());
        const long n = static_cast<long>(t) * c * z;
        const auto period = std::chrono::duration<double>(1.0 / fps);
        const auto start = std::chrono::steady_clock::now();
        auto first = start, last = start;  // when the first and the last frame were handed over
        long late = 0;
        for (long i = 0; i < n; i++) {
            const auto due = start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                         period * static_cast<double>(i));
            if (std::chrono::steady_clock::now() > due + period) late++;
            std::this_thread::sleep_until(due);
            auto *px = static_cast<std::uint16_t *>(stream.claim());  // the "sensor readout"
            for (int y = 0; y < size; y++)
                for (int x = 0; x < size; x++)
                    px[y * size + x] = static_cast<std::uint16_t>((i * 7 + y * 3 + x) & 0xFFFF);
            stream.commit();
            for (const auto &why : stream.take_refusals())  // a gap; the acquisition goes on
                std::fprintf(stderr, "warning: %s\n", why.c_str());
            last = std::chrono::steady_clock::now();
            if (i == 0) first = last;
        }
        const double secs = std::chrono::duration<double>(last - first).count();
        const double rate = n > 1 && secs > 0 ? static_cast<double>(n - 1) / secs : 0.0;
        const std::string report = stream.close();  // waits until everything is on disk
        const double total =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        std::printf("%ld frames in %.3f s: %.1f fps (target %.1f), %ld frames late, %lld dropped; "
                    "on disk after %.3f s\n", n, secs, rate, fps, late, stream_dropped(report),
                    total);
        std::printf("%s\n", report.c_str());
    } catch (const ows::Error &e) {
        std::fprintf(stderr, "error %d: %s\n", e.code, e.what());
        return 1;
    }
    return 0;
}
