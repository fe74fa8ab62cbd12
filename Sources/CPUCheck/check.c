// Compiled for any x86-64, and run as a constructor before any Swift code: the numeric modules are compiled for
// Haswell's instruction sets (Package.swift), so an older CPU must get one line here, not an illegal instruction later.
#include "CPUCheck.h"
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void append(char *out, size_t size, int *count, const char *name) {
    size_t used = strlen(out);
    snprintf(out + used, size - used, "%s%s", *count ? ", " : "", name);
    *count += 1;
}

int bard_missing_instruction_sets(char *out, size_t size) {
    int count = 0;
    if (size == 0) return 0;
    out[0] = 0;
#if defined(BARD_HASWELL) && defined(__x86_64__)
    __builtin_cpu_init();
    // What LLVM's haswell target may emit without intrinsics.
#define BARD_NEEDS(feature) if (!__builtin_cpu_supports(feature)) append(out, size, &count, feature);
    BARD_NEEDS("sse3") BARD_NEEDS("ssse3") BARD_NEEDS("sse4.1") BARD_NEEDS("sse4.2") BARD_NEEDS("popcnt")
    BARD_NEEDS("avx") BARD_NEEDS("avx2") BARD_NEEDS("fma") BARD_NEEDS("bmi") BARD_NEEDS("bmi2") BARD_NEEDS("f16c")
    BARD_NEEDS("movbe") BARD_NEEDS("lzcnt")
#undef BARD_NEEDS
#endif
    return count;
}

__attribute__((constructor)) static void bard_check_cpu(void) {
    char missing[256];
    if (bard_missing_instruction_sets(missing, sizeof missing) == 0) return;
    dprintf(2, "bard: error: this bard was built for x86-64 CPUs with AVX2 and FMA (Haswell or newer), and this CPU "
               "lacks %s; rebuild it with BARD_PORTABLE=1 swift build -c release\n", missing);
    _exit(69);  // EX_UNAVAILABLE
}
