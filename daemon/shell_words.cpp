#include "daemon/shell_words.h"

namespace vl {

namespace {
bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\n'; }
bool is_special(char c) {
  return c == '$' || c == '`' || c == '|' || c == '&' || c == ';' || c == '<' || c == '>' ||
         c == '(' || c == ')' || c == '*' || c == '?' || c == '[';
}
}  // namespace

Result<std::vector<std::string>> split_shell_words(std::string_view text) {
  std::vector<std::string> words;
  std::string word;
  bool in_word = false;
  auto refuse = [&](size_t pos, const char* what) {
    return Error::unsupported("command line offset " + std::to_string(pos) + ": " + what);
  };
  // Checked up front: quotes and backslashes copy bytes without looking at them, and no
  // execve argument can hold a NUL.
  if (size_t nul = text.find('\0'); nul != std::string_view::npos) return refuse(nul, "NUL byte");
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (is_blank(c)) {
      if (in_word) words.push_back(std::move(word)), word.clear(), in_word = false;
      continue;
    }
    if (c == '#' && !in_word) return refuse(i, "comment");
    if ((c == '~' || c == '{') && !in_word) return refuse(i, "tilde or brace expansion");
    if (is_special(c)) return refuse(i, "unquoted shell metacharacter");
    in_word = true;
    if (c == '\'') {
      size_t end = text.find('\'', i + 1);
      if (end == std::string_view::npos) return refuse(i, "unterminated single quote");
      word.append(text.substr(i + 1, end - i - 1));
      i = end;
    } else if (c == '"') {
      size_t j = i + 1;
      for (;; ++j) {
        if (j >= text.size()) return refuse(i, "unterminated double quote");
        char d = text[j];
        if (d == '"') break;
        if (d == '$' || d == '`') return refuse(j, "expansion inside double quotes");
        if (d == '\\' && j + 1 < text.size()) {
          char e = text[j + 1];
          if (e == '$' || e == '`' || e == '"' || e == '\\') {
            word += e;
            ++j;
            continue;
          }
          if (e == '\n') {
            ++j;
            continue;
          }
        }
        word += d;
      }
      i = j;
    } else if (c == '\\') {
      if (i + 1 >= text.size()) return refuse(i, "trailing backslash");
      if (text[i + 1] != '\n') word += text[i + 1];
      else if (word.empty()) in_word = false;
      ++i;
    } else {
      word += c;
    }
  }
  if (in_word) words.push_back(std::move(word));
  return words;
}

}  // namespace vl
