// Document sources for tokenizer training and export. By file name:
//   *.jsonl  one JSON object a line; the document is its "text" string; blank lines skipped
//   other    (e.g. *.txt) the whole file is one document
// and either may end in .xz (decompressed on the fly with liblzma).
#pragma once
#include <functional>
#include <string>
#include <string_view>

namespace pg {

// Calls fn for each document of each file, in order.
void for_each_document(const std::string& path, const std::function<void(std::string&&)>& fn);
// The "text" string of a JSON object; pg::fail (naming where) if the line is not an
// object or has no string "text".
std::string json_text_field(std::string_view line, const std::string& where);

}  // namespace pg
