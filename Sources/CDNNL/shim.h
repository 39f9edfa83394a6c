#ifndef CVT_CDNNL_SHIM_H
#define CVT_CDNNL_SHIM_H
// oneDNN's C API (Debian libdnnl-dev has no pkg-config file) plus libgomp's thread control:
// OMP_NUM_THREADS is read when libgomp loads, so the thread count must be set by call.
// omp.h lives in GCC's private include dir, which Swift's clang does not search, so the two
// functions we need are declared here.
#include <dnnl.h>
#include <dnnl_debug.h>
void omp_set_num_threads(int num_threads);
int omp_get_max_threads(void);
#endif
