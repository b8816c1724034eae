#include "threads.h"

#include <sched.h>

#include <fstream>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>

namespace mlspecqd {

namespace {

int read_int(const std::string& path) {
    std::ifstream in(path);
    int value = -1;
    in >> value;
    return value;
}

int count_physical_cores() {
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return 1;
    std::set<std::pair<int, int>> cores;  // (package, core) pairs: hyper-threads share one
    int logical = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
        if (!CPU_ISSET(cpu, &allowed)) continue;
        ++logical;
        const std::string base = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
        const int package = read_int(base + "physical_package_id");
        const int core = read_int(base + "core_id");
        if (package < 0 || core < 0) return logical > 0 ? CPU_COUNT(&allowed) : 1;
        cores.insert({package, core});
    }
    return cores.empty() ? 1 : static_cast<int>(cores.size());
}

int g_threads = default_num_threads();

}  // namespace

int default_num_threads() {
    static const int cores = count_physical_cores();
    return cores;
}

int num_threads() { return g_threads; }

void set_num_threads(int n) {
    if (n < 1) throw std::invalid_argument("thread count must be at least 1, got " + std::to_string(n));
    g_threads = n;
}

}  // namespace mlspecqd
