// Package arch is what the pinned llama.cpp (ollama v0.17.4, llama.cpp
// ec98e2002) requires of each architecture, in pure Go: the value rules it
// would abort on (Rules), the block kinds it derives from the block index or
// count (index patterns, dense leads, multi-token prediction, hybrids), the
// defaults it derives from the block count, the global tensors sized by the
// block count, the graph's names of block boundaries, and which tensors
// healing can fold into. Every entry cites the llama.cpp source it comes
// from. Block surgery and the cgo binding read these; nothing here runs a
// model.
package arch
