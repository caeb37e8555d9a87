/* Checks src_c/aiva_dnnl_api.h, our declarations of the oneDNN C API, against oneDNN's own
 * headers: every enum value, the layout of each struct we pass, and the type of each
 * function we call.  It compiles only if they agree (gcc or clang: __builtin_types_compatible_p).
 * `bash tests/c/run.sh onednn` runs it against the headers of the `onednn-devel-cpu-gomp`
 * wheel, downloaded there (they are not needed to build aiva_cy). */
#include "oneapi/dnnl/dnnl.h"
#include "aiva_dnnl_api.h"

#include <stddef.h>
#include <stdio.h>

#define SAME(a, b) _Static_assert((long long)(a) == (long long)(b), #a " != " #b)

SAME(AD_SUCCESS, dnnl_success);
SAME(AD_BF16, dnnl_bf16);
SAME(AD_F32, dnnl_f32);
SAME(AD_S32, dnnl_s32);
SAME(AD_S8, dnnl_s8);
SAME(AD_U8, dnnl_u8);
SAME(AD_FORMAT_TAG_ANY, dnnl_format_tag_any);
SAME(AD_ENGINE_CPU, dnnl_cpu);
SAME(AD_STREAM_DEFAULT_FLAGS, dnnl_stream_default_flags);
SAME(AD_SCRATCHPAD_MODE_USER, dnnl_scratchpad_mode_user);
SAME(AD_QUERY_IMPL_INFO_STR, dnnl_query_impl_info_str);
SAME(AD_QUERY_SRC_MD, dnnl_query_src_md);
SAME(AD_QUERY_WEIGHTS_MD, dnnl_query_weights_md);
SAME(AD_QUERY_DST_MD, dnnl_query_dst_md);
SAME(AD_QUERY_SCRATCHPAD_MD, dnnl_query_scratchpad_md);
SAME(AD_ARG_SRC, DNNL_ARG_SRC);
SAME(AD_ARG_DST, DNNL_ARG_DST);
SAME(AD_ARG_WEIGHTS, DNNL_ARG_WEIGHTS);
SAME(AD_ARG_SCRATCHPAD, DNNL_ARG_SCRATCHPAD);
SAME(AD_ARG_FROM, DNNL_ARG_FROM);
SAME(AD_ARG_TO, DNNL_ARG_TO);
SAME(sizeof(ad_dims_t), sizeof(dnnl_dims_t));
SAME(sizeof(ad_dim_t), sizeof(dnnl_dim_t));
/* Enums passed as int. */
SAME(sizeof(dnnl_data_type_t), sizeof(int));
SAME(sizeof(dnnl_format_tag_t), sizeof(int));
SAME(sizeof(dnnl_engine_kind_t), sizeof(int));
SAME(sizeof(dnnl_query_t), sizeof(int));
SAME(sizeof(dnnl_scratchpad_mode_t), sizeof(int));
SAME(sizeof(dnnl_status_t), sizeof(ad_status_t));
SAME(sizeof(dnnl_cpu_isa_t), sizeof(int));
/* Structs by layout. */
SAME(sizeof(ad_exec_arg_t), sizeof(dnnl_exec_arg_t));
SAME(offsetof(ad_exec_arg_t, arg), offsetof(dnnl_exec_arg_t, arg));
SAME(offsetof(ad_exec_arg_t, memory), offsetof(dnnl_exec_arg_t, memory));
SAME(sizeof(ad_version_t), sizeof(dnnl_version_t));
SAME(offsetof(ad_version_t, patch), offsetof(dnnl_version_t, patch));
SAME(offsetof(ad_version_t, hash), offsetof(dnnl_version_t, hash));
SAME(offsetof(ad_version_t, cpu_runtime), offsetof(dnnl_version_t, cpu_runtime));
/* ISA bits of aiva_onednn.h. */
#include "aiva_onednn.h"
SAME(AIVA_ONEDNN_ISA_AVX2, dnnl_cpu_isa_avx2);
SAME(AIVA_ONEDNN_ISA_AVX512_CORE, dnnl_cpu_isa_avx512_core);
SAME(AIVA_ONEDNN_ISA_AVX2_VNNI_BIT, dnnl_cpu_isa_avx2_vnni & ~dnnl_cpu_isa_avx2);
SAME(AIVA_ONEDNN_ISA_AVX512_VNNI_BIT, dnnl_cpu_isa_avx512_core_vnni & ~dnnl_cpu_isa_avx512_core);
SAME(AIVA_ONEDNN_ISA_AVX512_BF16_BIT, dnnl_cpu_isa_avx512_core_bf16 & ~dnnl_cpu_isa_avx512_core_vnni);
SAME(AIVA_ONEDNN_ISA_AMX_BIT & dnnl_cpu_isa_avx512_core_amx, AIVA_ONEDNN_ISA_AMX_BIT);
SAME(AIVA_ONEDNN_ISA_AMX_BIT & dnnl_cpu_isa_avx512_core_fp16, 0);

/* Signatures: the function-pointer fields of our header, read again with each of our type
 * names standing for oneDNN's (ad_X_t -> dnnl_X_t; the enums we pass as int -> the enum),
 * must have exactly the type of oneDNN's function. */
#define ad_status_t dnnl_status_t
#define ad_data_type_t dnnl_data_type_t
#define ad_format_tag_t dnnl_format_tag_t
#define ad_engine_kind_t dnnl_engine_kind_t
#define ad_query_t dnnl_query_t
#define ad_scratchpad_mode_t dnnl_scratchpad_mode_t
#define ad_cpu_isa_t dnnl_cpu_isa_t
#define ad_engine_t dnnl_engine_t
#define ad_stream_t dnnl_stream_t
#define ad_memory_desc_t dnnl_memory_desc_t
#define ad_const_memory_desc_t const_dnnl_memory_desc_t
#define ad_memory_t dnnl_memory_t
#define ad_primitive_desc_t dnnl_primitive_desc_t
#define ad_const_primitive_desc_t const_dnnl_primitive_desc_t
#define ad_primitive_t dnnl_primitive_t
#define ad_const_primitive_t const_dnnl_primitive_t
#define ad_primitive_attr_t dnnl_primitive_attr_t
#define ad_const_primitive_attr_t const_dnnl_primitive_attr_t
#define ad_exec_arg_t dnnl_exec_arg_t
#define ad_dims_t dnnl_dims_t
#define ad_version_t dnnl_version_t
#define ad_api ad_api_in_dnnl_types
#undef AIVA_DNNL_API_FUNCS
#include "aiva_dnnl_api.h"

#define SIG(field, fn)                                                                     \
    _Static_assert(__builtin_types_compatible_p(__typeof__(((ad_api_in_dnnl_types *)0)->field), \
                                                __typeof__(&fn)), #field " vs " #fn)
SIG(engine_create, dnnl_engine_create);
SIG(stream_create, dnnl_stream_create);
SIG(stream_wait, dnnl_stream_wait);
SIG(stream_destroy, dnnl_stream_destroy);
SIG(md_create_with_strides, dnnl_memory_desc_create_with_strides);
SIG(md_create_with_tag, dnnl_memory_desc_create_with_tag);
SIG(md_clone, dnnl_memory_desc_clone);
SIG(md_destroy, dnnl_memory_desc_destroy);
SIG(md_equal, dnnl_memory_desc_equal);
SIG(md_get_size, dnnl_memory_desc_get_size);
SIG(memory_create, dnnl_memory_create);
SIG(memory_destroy, dnnl_memory_destroy);
SIG(attr_create, dnnl_primitive_attr_create);
SIG(attr_destroy, dnnl_primitive_attr_destroy);
SIG(attr_set_scratchpad_mode, dnnl_primitive_attr_set_scratchpad_mode);
SIG(matmul_pd_create, dnnl_matmul_primitive_desc_create);
SIG(reorder_pd_create, dnnl_reorder_primitive_desc_create);
SIG(pd_query, dnnl_primitive_desc_query);
SIG(pd_query_md, dnnl_primitive_desc_query_md);
SIG(pd_destroy, dnnl_primitive_desc_destroy);
SIG(primitive_create, dnnl_primitive_create);
SIG(primitive_execute, dnnl_primitive_execute);
SIG(primitive_destroy, dnnl_primitive_destroy);
SIG(get_effective_cpu_isa, dnnl_get_effective_cpu_isa);
SIG(version, dnnl_version);
SIG(gemm_u8s8s32, dnnl_gemm_u8s8s32);

int main(void)
{
    puts("aiva_dnnl_api.h matches oneDNN's headers");
    return 0;
}
