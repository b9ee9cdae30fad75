// Public C++ header of the reformer_ext operator library (libreformer_ops), for LibTorch programs.
//
// The operators are called through the PyTorch dispatcher, by name and schema (the schemas are
// in csrc/registration.cpp, e.g. "reformer::lsh_attention"); the library registers them with the
// dispatcher from static initialisers when it is loaded. This header only adds what a program
// needs to be sure it is loaded.
#pragma once

namespace reformer {

// Call once (e.g. at the start of main) before looking up a "reformer::" operator. The library's
// registrations run when it loads, but a linker with --as-needed (the default of many
// distributions) drops a shared library none of whose symbols the program uses, and the operators
// would silently be missing. Calling this function uses a symbol of the library, so it stays
// linked with every linker and build system. Throws c10::Error if the operators are not in the
// dispatcher.
void ensure_operators_registered();

}  // namespace reformer
