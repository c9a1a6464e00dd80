#pragma once
// The file operations of StagedOutput (staged_output.hpp): new files written
// and copied in pieces with a signal check between them and synced, directory
// syncs, the cleanup of dead runs' leftovers, and the checks of a directory's
// name and contents.

#include <cstddef>
#include <filesystem>
#include <string>
#include <vector>

namespace loftq_cli {

namespace fs = std::filesystem;

// Creates `path` (which must not exist) with `bytes` then `more`, synced;
// every failure throws, naming `shown`.
void write_new_file(const std::string& path, const std::string& shown, const unsigned char* bytes, std::size_t size,
                    const unsigned char* more = nullptr, std::size_t more_size = 0);
// Copies the regular file `src` to the new file `path`; failures name `src`
// when reading and `shown` when writing.
void copy_new_file(const fs::path& src, const std::string& path, const std::string& shown);
// fsync of a directory (its entries are durable).
void fsync_dir(const fs::path& dir);
// Removes the leftovers of dead runs for the output `dir`.
void clean_leftovers(const fs::path& dir);
// Throws InputError when `dir`'s name leaves no room for the staging suffix.
void check_name_length(const fs::path& dir, const fs::path& shown);
// True when DIR is empty or holds the marker and otherwise only regular
// files named in `names`.
bool only_tool_files(const fs::path& dir, const std::vector<std::string>& names);
// The first entry of DIR (by name) that is neither the marker nor named in
// `names`; empty when there is none.
std::string foreign_entry(const fs::path& dir, const std::vector<std::string>& names);

}  // namespace loftq_cli
