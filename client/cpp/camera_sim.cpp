// A simulated camera streaming a 5D acquisition (t, c, z, y, x) to the writer daemon at a
// fixed frame rate, writing straight into the ring (claim/commit). Prints the rate achieved.
//
//   camera_sim ROOT_PATH FPS T C Z SIZE [ENDPOINT TOKEN]
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "ows.hpp"

int main(int argc, char **argv) {
    if (argc != 7 && argc != 9) {
        std::fprintf(stderr, "usage: %s ROOT_PATH FPS T C Z SIZE [ENDPOINT TOKEN]\n", argv[0]);
        return 2;
    }
    const std::string root = argv[1];
    const double fps = std::atof(argv[2]);
    const int t = std::atoi(argv[3]), c = std::atoi(argv[4]), z = std::atoi(argv[5]);
    const int size = std::atoi(argv[6]);
    const std::string endpoint = argc == 9 ? argv[7] : "", token = argc == 9 ? argv[8] : "";
    const std::string settings =
        "{\"root_path\": \"" + root + "\", \"dtype\": \"uint16\", \"overwrite\": true,"
        " \"dimensions\": ["
        "{\"name\": \"t\", \"count\": " + std::to_string(t) + "},"
        "{\"name\": \"c\", \"count\": " + std::to_string(c) + "},"
        "{\"name\": \"z\", \"count\": " + std::to_string(z) + ", \"scale\": 0.5, \"unit\": \"um\"},"
        "{\"name\": \"y\", \"count\": " + std::to_string(size) + "},"
        "{\"name\": \"x\", \"count\": " + std::to_string(size) + "}]}";
    try {
        ows::Stream stream(settings, endpoint, token);
        const long n = static_cast<long>(t) * c * z;
        const auto period = std::chrono::duration<double>(1.0 / fps);
        const auto start = std::chrono::steady_clock::now();
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
        }
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const std::string report = stream.close();
        std::printf("%ld frames in %.3f s: %.1f fps (target %.1f), %ld frames late\n", n, secs,
                    static_cast<double>(n) / secs, fps, late);
        std::printf("%s\n", report.c_str());
    } catch (const ows::Error &e) {
        std::fprintf(stderr, "error %d: %s\n", e.code, e.what());
        return 1;
    }
    return 0;
}
