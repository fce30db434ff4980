# FlashInfer (header-only use, no Python, no JIT): the adapter src/cuda/flashinfer.cu as the OBJECT library
# tandem_flashinfer, the only target that sees FlashInfer's headers.
#
# Include it after TANDEM_SOURCES is globbed and before add_library(tandem_lib ...): it takes flashinfer.cu out of
# TANDEM_SOURCES (the src/cuda/*.cu glob picks it up, but it needs the include path below). Then link the objects
# into tandem_lib with target_link_libraries(tandem_lib PRIVATE tandem_flashinfer).
#
# TANDEM_FLASHINFER_DIR: the headers unpacked by tools/fetch_flashinfer.sh from flashinfer-python==0.7.2.post1
# (include/, cccl/, cutlass/include/). On a machine without network, carry .deps/flashinfer.tar.gz and unpack it
# with `tar xzf .deps/flashinfer.tar.gz -C .deps`.
set(TANDEM_FLASHINFER_VERSION 0.7.2.post1)
get_filename_component(_fi_root "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)  # the repository root
set(TANDEM_FLASHINFER_DIR "${_fi_root}/.deps/flashinfer" CACHE PATH
    "FlashInfer ${TANDEM_FLASHINFER_VERSION} headers (include/, cccl/), unpacked by tools/fetch_flashinfer.sh")

set(_fi_required
    include/flashinfer/attention/prefill.cuh
    include/flashinfer/attention/scheduler.cuh
    include/flashinfer/page.cuh
    cccl/cub/cub/cub.cuh
    cccl/libcudacxx/include/cuda/cmath
    cccl/thrust/thrust/version.h)
foreach(_f IN LISTS _fi_required)
  if(NOT EXISTS "${TANDEM_FLASHINFER_DIR}/${_f}")
    message(FATAL_ERROR
      "FlashInfer headers not found: ${TANDEM_FLASHINFER_DIR}/${_f} is missing.\n"
      "Run tools/fetch_flashinfer.sh (tools/setup.sh and `make setup` do), or on a machine without network "
      "unpack the carried archive: tar xzf .deps/flashinfer.tar.gz -C .deps\n"
      "(or point -DTANDEM_FLASHINFER_DIR at an unpacked flashinfer-python==${TANDEM_FLASHINFER_VERSION} tree)")
  endif()
endforeach()
set(_fi_stamp "${TANDEM_FLASHINFER_DIR}/.stamp")
if(EXISTS "${_fi_stamp}")
  file(READ "${_fi_stamp}" _fi_stamp_text)
  if(NOT _fi_stamp_text MATCHES "flashinfer-python==${TANDEM_FLASHINFER_VERSION} ")
    message(FATAL_ERROR "FlashInfer headers at ${TANDEM_FLASHINFER_DIR} are not version ${TANDEM_FLASHINFER_VERSION} "
                        "(stamp: ${_fi_stamp_text}); re-run tools/fetch_flashinfer.sh")
  endif()
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${_fi_stamp}")
endif()

set(_fi_source "${_fi_root}/src/cuda/flashinfer.cu")
if(DEFINED TANDEM_SOURCES)
  list(REMOVE_ITEM TANDEM_SOURCES "${_fi_source}")
endif()

add_library(tandem_flashinfer OBJECT "${_fi_source}")
# The wheel's CCCL 3.6 must come before the toolkit's CCCL 3.0 (CUDA 13.0 lacks cuda::fast_mod_div, which
# fastdiv.cuh needs): nvcc adds the toolkit's as -isystem after every -I, and this target links nothing that
# would add the toolkit's include dir as -I. Order as FlashInfer's JIT: cub, libcudacxx, thrust, include.
# (cutlass/include is only for the Hopper FA3 kernels, not instantiated.)
target_include_directories(tandem_flashinfer BEFORE PRIVATE
  "${TANDEM_FLASHINFER_DIR}/cccl/cub"
  "${TANDEM_FLASHINFER_DIR}/cccl/libcudacxx/include"
  "${TANDEM_FLASHINFER_DIR}/cccl/thrust"
  "${TANDEM_FLASHINFER_DIR}/include")
target_include_directories(tandem_flashinfer PRIVATE "${_fi_root}/src")
# -static-global-template-stub=false: nvcc 13 makes template-kernel stubs static by default (FlashInfer #1513).
target_compile_options(tandem_flashinfer PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -static-global-template-stub=false>)
# sm_90a only (the FA2 kernels also build for other archs, at one more full compile each).
set_target_properties(tandem_flashinfer PROPERTIES CUDA_ARCHITECTURES 90a)
