#include "tokenizer/docs.h"

#include <lzma.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "common/check.h"

namespace pg {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Streams the bytes of a file, xz-decompressed when its name ends in .xz.
void for_each_chunk(const std::string& path, const std::function<void(const char*, size_t)>& fn) {
    std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
    if (!f) fail("%s: cannot open (%s)", path.c_str(), std::strerror(errno));
    std::vector<uint8_t> in(1 << 20), out(1 << 20);
    if (!ends_with(path, ".xz")) {
        size_t n;
        while ((n = std::fread(in.data(), 1, in.size(), f.get())) > 0) fn(reinterpret_cast<char*>(in.data()), n);
        if (std::ferror(f.get())) fail("%s: read error", path.c_str());
        return;
    }
    lzma_stream z = LZMA_STREAM_INIT;
    if (lzma_stream_decoder(&z, UINT64_MAX, LZMA_CONCATENATED) != LZMA_OK) fail("%s: cannot start xz decoder", path.c_str());
    std::unique_ptr<lzma_stream, void (*)(lzma_stream*)> guard(&z, &lzma_end);
    lzma_action action = LZMA_RUN;
    for (;;) {
        if (z.avail_in == 0 && action == LZMA_RUN) {
            z.next_in = in.data();
            z.avail_in = std::fread(in.data(), 1, in.size(), f.get());
            if (std::ferror(f.get())) fail("%s: read error", path.c_str());
            if (std::feof(f.get())) action = LZMA_FINISH;
        }
        z.next_out = out.data();
        z.avail_out = out.size();
        const lzma_ret r = lzma_code(&z, action);
        fn(reinterpret_cast<char*>(out.data()), out.size() - z.avail_out);
        if (r == LZMA_STREAM_END) return;
        if (r != LZMA_OK) fail("%s: xz data is corrupt or truncated (liblzma error %d)", path.c_str(), int(r));
    }
}

struct JsonReader {
    std::string_view s;
    size_t i = 0;
    const std::string& where;

    [[noreturn]] void bad(const char* what) { fail("%s: bad JSON at column %zu: %s", where.c_str(), i + 1, what); }
    void ws() {
        while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n')) ++i;
    }
    char peek() {
        ws();
        return i < s.size() ? s[i] : '\0';
    }
    void expect(char c) {
        if (peek() != c) bad(format("expected '%c'", c).c_str());
        ++i;
    }
    unsigned hex4() {
        if (i + 4 > s.size()) bad("short \\u escape");
        unsigned v = 0;
        for (int k = 0; k < 4; ++k) {
            const char c = s[i++];
            const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
            if (d < 0) bad("bad \\u escape");
            v = v * 16 + d;
        }
        return v;
    }
    static void put_utf8(std::string& o, unsigned cp) {
        if (cp < 0x80) {
            o += char(cp);
        } else if (cp < 0x800) {
            o += char(0xC0 | cp >> 6);
            o += char(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            o += char(0xE0 | cp >> 12);
            o += char(0x80 | (cp >> 6 & 0x3F));
            o += char(0x80 | (cp & 0x3F));
        } else {
            o += char(0xF0 | cp >> 18);
            o += char(0x80 | (cp >> 12 & 0x3F));
            o += char(0x80 | (cp >> 6 & 0x3F));
            o += char(0x80 | (cp & 0x3F));
        }
    }
    std::string str() {
        expect('"');
        std::string o;
        for (;;) {
            if (i >= s.size()) bad("unterminated string");
            char c = s[i++];
            if (c == '"') return o;
            if (c != '\\') {
                o += c;
                continue;
            }
            if (i >= s.size()) bad("unterminated escape");
            switch (char e = s[i++]) {
                case '"': case '\\': case '/': o += e; break;
                case 'b': o += '\b'; break;
                case 'f': o += '\f'; break;
                case 'n': o += '\n'; break;
                case 'r': o += '\r'; break;
                case 't': o += '\t'; break;
                case 'u': {
                    unsigned cp = hex4();
                    // A surrogate pair encodes one code point above U+FFFF; a lone
                    // surrogate becomes U+FFFD, as Python's json with errors="replace".
                    if (cp >= 0xD800 && cp < 0xDC00 && s.substr(i, 2) == "\\u") {
                        size_t save = i;
                        i += 2;
                        unsigned lo = hex4();
                        if (lo >= 0xDC00 && lo < 0xE000) cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        else i = save;
                    }
                    put_utf8(o, cp >= 0xD800 && cp < 0xE000 ? 0xFFFD : cp);
                    break;
                }
                default: bad("unknown escape");
            }
        }
    }
    void skip_value() {
        char c = peek();
        if (c == '"') {
            str();
        } else if (c == '{' || c == '[') {
            const char close = c == '{' ? '}' : ']';
            ++i;
            if (peek() == close) {
                ++i;
                return;
            }
            for (;;) {
                if (close == '}') {
                    str();
                    expect(':');
                }
                skip_value();
                if (peek() == ',') {
                    ++i;
                    continue;
                }
                expect(close);
                return;
            }
        } else {
            size_t start = i;
            while (i < s.size() && std::strchr(",}] \t\r\n", s[i]) == nullptr) ++i;
            if (i == start) bad("expected a value");
        }
    }
};

}  // namespace

std::string json_text_field(std::string_view line, const std::string& where) {
    JsonReader r{line, 0, where};
    r.expect('{');
    std::string text;
    bool found = false;
    if (r.peek() != '}') {
        for (;;) {
            std::string key = r.str();
            r.expect(':');
            if (key == "text" && r.peek() == '"') {
                text = r.str();
                found = true;
            } else {
                r.skip_value();
            }
            if (r.peek() != ',') break;
            ++r.i;
        }
    }
    r.expect('}');
    if (r.peek() != '\0') r.bad("text after the object");
    if (!found) fail("%s: JSON object has no \"text\" string", where.c_str());
    return text;
}

void for_each_document(const std::string& path, const std::function<void(std::string&&)>& fn) {
    const bool jsonl = ends_with(path, ".jsonl") || ends_with(path, ".jsonl.xz");
    std::string buf;
    if (!jsonl) {
        for_each_chunk(path, [&](const char* p, size_t n) { buf.append(p, n); });
        fn(std::move(buf));
        return;
    }
    long line_no = 0;
    auto emit = [&](std::string_view line) {
        ++line_no;
        if (line.find_first_not_of(" \t\r") == std::string_view::npos) return;
        fn(json_text_field(line, format("%s:%ld", path.c_str(), line_no)));
    };
    for_each_chunk(path, [&](const char* p, size_t n) {
        buf.append(p, n);
        size_t start = 0, nl;
        while ((nl = buf.find('\n', start)) != std::string::npos) {
            emit(std::string_view(buf).substr(start, nl - start));
            start = nl + 1;
        }
        buf.erase(0, start);
    });
    if (!buf.empty()) emit(buf);
}

}  // namespace pg
