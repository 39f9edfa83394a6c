#ifndef CVT_CHDF5_SHIM_H
#define CVT_CHDF5_SHIM_H

// Debian's libhdf5-dev (pkg-config hdf5: -I/usr/include/hdf5/serial). Swift cannot import the
// HDF5 constants that are macros over library globals or casts (H5T_NATIVE_FLOAT is
// `(H5OPEN H5T_NATIVE_FLOAT_g)`, H5P_DEFAULT is `(hid_t)0`, ...), nor the API-version macros
// (H5Literate is H5Literate1/2 depending on the library version), so this header wraps the few
// the TFCheckpoint module needs in static inline functions with stable signatures.
#include <hdf5.h>
#include <stddef.h>

static inline hid_t cvt_h5p_default(void) { return H5P_DEFAULT; }
static inline hid_t cvt_h5e_default(void) { return H5E_DEFAULT; }
static inline hid_t cvt_h5s_all(void) { return H5S_ALL; }
static inline hid_t cvt_h5t_native_float(void) { return H5T_NATIVE_FLOAT; }
static inline unsigned cvt_h5f_acc_rdonly(void) { return H5F_ACC_RDONLY; }

/// Turns off HDF5's automatic printing of error stacks to stderr for the calling thread (in a
/// thread-safe build, such as Debian's, the setting is per thread). Returns a negative value on failure.
static inline herr_t cvt_h5_silence_errors(void) { return H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

/// Link kinds reported to cvt_h5_link_callback.
enum { CVT_H5_LINK_HARD = 0, CVT_H5_LINK_SOFT = 1, CVT_H5_LINK_EXTERNAL = 2, CVT_H5_LINK_OTHER = 3 };

/// Called for each link of a group, in name order. Return 0 to continue, 1 to stop, negative on error.
typedef int (*cvt_h5_link_callback)(hid_t group, const char *name, int link_kind, void *context);

struct cvt_h5_iterate_context {
    cvt_h5_link_callback callback;
    void *context;
};

static herr_t cvt_h5_iterate_trampoline(hid_t group, const char *name, const H5L_info_t *info, void *data) {
    struct cvt_h5_iterate_context *ctx = (struct cvt_h5_iterate_context *)data;
    int kind = CVT_H5_LINK_OTHER;
    if (info != NULL) {
        switch (info->type) {
        case H5L_TYPE_HARD: kind = CVT_H5_LINK_HARD; break;
        case H5L_TYPE_SOFT: kind = CVT_H5_LINK_SOFT; break;
        case H5L_TYPE_EXTERNAL: kind = CVT_H5_LINK_EXTERNAL; break;
        default: kind = CVT_H5_LINK_OTHER; break;
        }
    }
    return (herr_t)ctx->callback(group, name, kind, ctx->context);
}

/// H5Literate over the links of `group` (not recursive) in increasing name order.
/// Returns a negative value on failure, otherwise the last callback's return value.
static inline herr_t cvt_h5_iterate_links(hid_t group, cvt_h5_link_callback callback, void *context) {
    struct cvt_h5_iterate_context ctx;
    hsize_t index = 0;
    ctx.callback = callback;
    ctx.context = context;
    return H5Literate(group, H5_INDEX_NAME, H5_ITER_INC, &index, cvt_h5_iterate_trampoline, &ctx);
}

/// Called for each entry of the default error stack, innermost first.
typedef void (*cvt_h5_error_callback)(const char *function_name, const char *description, void *context);

struct cvt_h5_error_context {
    cvt_h5_error_callback callback;
    void *context;
};

static herr_t cvt_h5_error_trampoline(unsigned n, const H5E_error2_t *err, void *data) {
    struct cvt_h5_error_context *ctx = (struct cvt_h5_error_context *)data;
    (void)n;
    if (err != NULL) {
        ctx->callback(err->func_name, err->desc, ctx->context);
    }
    return 0;
}

/// Walks the calling thread's current error stack, innermost (most specific) entry first.
static inline herr_t cvt_h5_walk_errors(cvt_h5_error_callback callback, void *context) {
    struct cvt_h5_error_context ctx;
    ctx.callback = callback;
    ctx.context = context;
    return H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, cvt_h5_error_trampoline, &ctx);
}

#endif
