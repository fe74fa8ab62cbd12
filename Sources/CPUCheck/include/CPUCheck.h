#ifndef BARD_CPU_CHECK_H
#define BARD_CPU_CHECK_H
#include <stddef.h>

/// Writes into `out` (NUL-terminated, at most `size` bytes) the instruction sets this build's numeric modules were
/// compiled for that this CPU lacks, separated by ", ", and returns how many there are: none on a portable build.
int bard_missing_instruction_sets(char *out, size_t size);

#endif
