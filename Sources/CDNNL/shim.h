#ifndef CVT_CDNNL_SHIM_H
#define CVT_CDNNL_SHIM_H
// oneDNN's C API (Debian libdnnl-dev has no pkg-config file) plus libgomp's thread control:
// OMP_NUM_THREADS is read when libgomp loads, so the thread count must be set by call.
// omp.h lives in GCC's private include dir, which Swift's clang does not search, so the
// functions we need are declared here. GOMP_parallel is what `#pragma omp parallel` compiles to
// (libgomp's stable ABI): it runs fn(data) on a team of num_threads (flags 0), the calling thread
// being thread 0, and lets Swift start a team without compiling C with -fopenmp.
#include <dnnl.h>
#include <dnnl_debug.h>
void omp_set_num_threads(int num_threads);
int omp_get_max_threads(void);
int omp_get_thread_num(void);
int omp_get_num_threads(void);
void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags);
#endif
