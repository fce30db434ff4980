# ASan + UBSan build of the host code (issue 13): configure a build dir of its own with -DTANDEM_SANITIZE=ON
# (`make test` uses build-asan) and build only the CPU test binaries there.
#
# C++ sources get -fsanitize=address,undefined (UBSan fatal: -fno-sanitize-recover); .cu files are compiled by nvcc
# exactly as in the normal build (no sanitizer flags, so ccache serves them from that build), and executables link
# the sanitizer runtimes. The CUDA runtime is static; on a machine without a GPU its calls fail cleanly.
# C++ is built at -O1 -g1 (line tables for reports, quicker to compile than -O3 under ASan).
# Run the tests with tools/sanitize.env's options (LeakSanitizer suppressions for the CUDA runtime).
option(TANDEM_SANITIZE "Build host C++ with AddressSanitizer + UndefinedBehaviorSanitizer" OFF)
if(TANDEM_SANITIZE)
  set(_san -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
  add_compile_options("$<$<COMPILE_LANGUAGE:CXX>:${_san}>")
  add_link_options("$<$<LINK_LANGUAGE:CXX>:-fsanitize=address,undefined>")
  string(REPLACE "-O3" "-O1 -g1" CMAKE_CXX_FLAGS_RELEASE "${CMAKE_CXX_FLAGS_RELEASE}")
  message(STATUS "TANDEM_SANITIZE: host C++ built with ${_san}")
endif()
