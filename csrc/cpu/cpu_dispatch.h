// Run-time choice of instruction set for the hottest CPU loops.
//
// The library is built for the baseline x86-64 instruction set (no -march), so a wheel built on
// one machine runs on any x86-64 CPU. A function marked REFORMER_MULTIARCH is compiled twice:
// once for the baseline and once for x86-64-v3 (AVX2 + FMA: x86-64 server CPUs since 2013, every
// AMD EPYC); the dynamic loader picks the version for the CPU it runs on (a GNU ifunc), once, so
// every call in a process takes the same path and results stay the same for any thread count.
// Marked: the per-task functions of the attention (forward_chunk, backward_head), the hash
// (hash_block), the shared tile GEMM (tile_gemm) and the fixed-order GEMM's tile task
// (compute_tile). `flatten` inlines the helpers it calls into each version, so they
// are compiled for that instruction set too. Elsewhere (not x86-64, not ELF/glibc, or a build
// with -march set, REFORMER_EXT_MARCH) the attribute is empty and the build's flags decide.
// There is no AVX-512 version: it could not be measured on the development machines, so
// whether it pays is unknown.
#pragma once

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && \
    !defined(REFORMER_SINGLE_ARCH)
#define REFORMER_MULTIARCH __attribute__((target_clones("arch=x86-64-v3", "default"), flatten))
// Kernels that size their vectors at compile time size them for the best version (AVX2).
#define REFORMER_MULTIARCH_VECTOR_BYTES 32
#else
#define REFORMER_MULTIARCH
#endif
