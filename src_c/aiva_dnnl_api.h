/* The part of oneDNN 3.x's C API that aiva_onednn.c calls, declared here instead of
 * including oneDNN's headers (the wheel that carries the library ships none).  Every name
 * has our prefix (ad_, AD_) so that tests/c/onednn_abi.c can include this beside the real
 * headers and check each value and layout against them.
 *
 * Types, enum values and signatures are those of include/oneapi/dnnl/dnnl_types.h,
 * dnnl_common_types.h, dnnl.h and dnnl_common.h of oneDNN v3.2 (the `onednn-cpu-gomp`
 * 2023.2.0 wheel); the 3.x series keeps them.  Handles are opaque pointers; enums are
 * passed as int, which a C enum of these values is on every ABI the library ships for. */
#ifndef AIVA_DNNL_API_TYPES
#define AIVA_DNNL_API_TYPES

#include <stddef.h>
#include <stdint.h>

typedef int ad_status_t;
/* oneDNN's enums, passed as int. */
typedef int ad_data_type_t, ad_format_tag_t, ad_engine_kind_t, ad_query_t,
    ad_scratchpad_mode_t, ad_cpu_isa_t;
typedef int64_t ad_dim_t;
typedef ad_dim_t ad_dims_t[12];   /* DNNL_MAX_NDIMS */
typedef struct ad_engine *ad_engine_t;
typedef struct ad_stream *ad_stream_t;
typedef struct ad_memory_desc *ad_memory_desc_t;
typedef const struct ad_memory_desc *ad_const_memory_desc_t;
typedef struct ad_memory *ad_memory_t;
typedef struct ad_primitive_desc *ad_primitive_desc_t;
typedef const struct ad_primitive_desc *ad_const_primitive_desc_t;
typedef struct ad_primitive *ad_primitive_t;
typedef const struct ad_primitive *ad_const_primitive_t;
typedef struct ad_primitive_attr *ad_primitive_attr_t;
typedef const struct ad_primitive_attr *ad_const_primitive_attr_t;
typedef struct { int arg; ad_memory_t memory; } ad_exec_arg_t;
typedef struct {
    int major, minor, patch;
    const char *hash;
    unsigned cpu_runtime, gpu_runtime;
} ad_version_t;

enum {
    AD_SUCCESS = 0,                                             /* dnnl_status_t */
    AD_BF16 = 2, AD_F32 = 3, AD_S32 = 4, AD_S8 = 5, AD_U8 = 6,  /* dnnl_data_type_t */
    AD_FORMAT_TAG_ANY = 1,                                      /* dnnl_format_tag_t */
    AD_ENGINE_CPU = 1,                                          /* dnnl_engine_kind_t */
    AD_STREAM_DEFAULT_FLAGS = 1,                                /* dnnl_stream_in_order */
    AD_SCRATCHPAD_MODE_USER = 1,                                /* dnnl_scratchpad_mode_t */
    AD_QUERY_IMPL_INFO_STR = 8,                                 /* dnnl_query_t */
    AD_QUERY_SRC_MD = 129, AD_QUERY_WEIGHTS_MD = 131, AD_QUERY_DST_MD = 133,
    AD_QUERY_SCRATCHPAD_MD = 136,
    AD_ARG_SRC = 1, AD_ARG_DST = 17, AD_ARG_WEIGHTS = 33,       /* DNNL_ARG_* */
    AD_ARG_SCRATCHPAD = 80, AD_ARG_FROM = 1, AD_ARG_TO = 17
};

#endif

/* The functions, looked up by their dnnl_ names in aiva_onednn_open.  (A guard of its own:
 * tests/c/onednn_abi.c includes this part again with oneDNN's types in place of ours.) */
#ifndef AIVA_DNNL_API_FUNCS
#define AIVA_DNNL_API_FUNCS
typedef struct {
    ad_status_t (*engine_create)(ad_engine_t *, ad_engine_kind_t, size_t);
    ad_status_t (*stream_create)(ad_stream_t *, ad_engine_t, unsigned);
    ad_status_t (*stream_wait)(ad_stream_t);
    ad_status_t (*stream_destroy)(ad_stream_t);
    ad_status_t (*md_create_with_strides)(ad_memory_desc_t *, int, const ad_dims_t,
                                          ad_data_type_t, const ad_dims_t);
    ad_status_t (*md_create_with_tag)(ad_memory_desc_t *, int, const ad_dims_t, ad_data_type_t,
                                      ad_format_tag_t);
    ad_status_t (*md_clone)(ad_memory_desc_t *, ad_const_memory_desc_t);
    ad_status_t (*md_destroy)(ad_memory_desc_t);
    int (*md_equal)(ad_const_memory_desc_t, ad_const_memory_desc_t);
    size_t (*md_get_size)(ad_const_memory_desc_t);
    ad_status_t (*memory_create)(ad_memory_t *, ad_const_memory_desc_t, ad_engine_t, void *);
    ad_status_t (*memory_destroy)(ad_memory_t);
    ad_status_t (*attr_create)(ad_primitive_attr_t *);
    ad_status_t (*attr_destroy)(ad_primitive_attr_t);
    ad_status_t (*attr_set_scratchpad_mode)(ad_primitive_attr_t, ad_scratchpad_mode_t);
    ad_status_t (*matmul_pd_create)(ad_primitive_desc_t *, ad_engine_t, ad_const_memory_desc_t,
                                    ad_const_memory_desc_t, ad_const_memory_desc_t,
                                    ad_const_memory_desc_t, ad_const_primitive_attr_t);
    ad_status_t (*reorder_pd_create)(ad_primitive_desc_t *, ad_const_memory_desc_t, ad_engine_t,
                                     ad_const_memory_desc_t, ad_engine_t,
                                     ad_const_primitive_attr_t);
    ad_status_t (*pd_query)(ad_const_primitive_desc_t, ad_query_t, int, void *);
    ad_const_memory_desc_t (*pd_query_md)(ad_const_primitive_desc_t, ad_query_t, int);
    ad_status_t (*pd_destroy)(ad_primitive_desc_t);
    ad_status_t (*primitive_create)(ad_primitive_t *, ad_const_primitive_desc_t);
    ad_status_t (*primitive_execute)(ad_const_primitive_t, ad_stream_t, int,
                                     const ad_exec_arg_t *);
    ad_status_t (*primitive_destroy)(ad_primitive_t);
    ad_cpu_isa_t (*get_effective_cpu_isa)(void);
    const ad_version_t *(*version)(void);
    /* The BLAS-like products (row-major; C = alpha (op(A) - ao)(op(B) - bo) + beta C + co). */
    ad_status_t (*gemm_u8s8s32)(char, char, char, ad_dim_t, ad_dim_t, ad_dim_t, float,
                                const uint8_t *, ad_dim_t, uint8_t, const int8_t *, ad_dim_t,
                                int8_t, float, int32_t *, ad_dim_t, const int32_t *);
    /* Exported by libdnnl (DNNL_API in src/cpu/gemm/gemm.hpp) but declared in no public
     * header, so it is looked up optionally and not in tests/c/onednn_abi.c; its bfloat16_t
     * is a struct of one uint16_t, passed by pointer. */
    ad_status_t (*gemm_bf16bf16f32)(char, char, ad_dim_t, ad_dim_t, ad_dim_t, float,
                                    const uint16_t *, ad_dim_t, const uint16_t *, ad_dim_t,
                                    float, float *, ad_dim_t);
} ad_api;

#endif
