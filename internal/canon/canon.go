// Package canon turns each request into its one canonical form at the edge
// of the pipeline: the target and client fixed by the entry point, and one
// spelling of the path. Every later stage decides on that path, and it is
// the path forwarded upstream, so a rule cannot be walked around by writing
// the same path another way (//a, /a/./b, /x/../a, %61).
package canon

import (
	"errors"
	"fmt"
	"strings"
)

// ErrPath is wrapped by every error Path returns.
var ErrPath = errors.New("path has no canonical form")

// Path returns the canonical form of an escaped request path: percent-
// encoded unreserved characters decoded (RFC 3986 §2.3) and other escapes
// written with upper-case hex (§6.2.2.1), dot segments removed (§5.2.4),
// repeated slashes merged, and a leading slash. It refuses an encoded "/",
// any "\" (read as "/" by some servers), NUL and other control characters,
// and a malformed escape: each of those could name a different resource
// upstream than the one sluice decided on.
func Path(escaped string) (string, error) {
	if escaped == "" {
		return "/", nil
	}
	if isCanonical(escaped) {
		return escaped, nil
	}
	dec := make([]byte, 0, len(escaped))
	for i := 0; i < len(escaped); i++ {
		c := escaped[i]
		switch {
		case c == '%':
			if i+2 >= len(escaped) || !isHex(escaped[i+1]) || !isHex(escaped[i+2]) {
				return "", fmt.Errorf("%w: malformed escape at byte %d", ErrPath, i)
			}
			b := unhex(escaped[i+1])<<4 | unhex(escaped[i+2])
			i += 2
			switch {
			case b == '/':
				return "", fmt.Errorf("%w: encoded / (%%2F)", ErrPath)
			case b == '\\':
				return "", fmt.Errorf("%w: encoded \\ (%%5C)", ErrPath)
			case b < 0x20 || b == 0x7f:
				return "", fmt.Errorf("%w: encoded control character %%%02X", ErrPath, b)
			case unreserved(b):
				dec = append(dec, b)
			default:
				dec = append(dec, '%', upperHex[b>>4], upperHex[b&15])
			}
		case c == '\\':
			return "", fmt.Errorf("%w: \\ in the path", ErrPath)
		case c < 0x20 || c == 0x7f:
			return "", fmt.Errorf("%w: control character in the path", ErrPath)
		default:
			dec = append(dec, c)
		}
	}
	return removeDots(string(dec)), nil
}

// removeDots merges repeated slashes and removes "." and ".." segments; a
// ".." at the root stays at the root. A path that ended in "/", "." or ".."
// keeps its trailing slash.
func removeDots(p string) string {
	segs := strings.Split(p, "/")
	out := make([]string, 0, len(segs))
	trailing := false
	for _, s := range segs {
		trailing = false
		switch s {
		case "":
			trailing = true
		case ".":
			trailing = true
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			trailing = true
		default:
			out = append(out, s)
		}
	}
	var b strings.Builder
	b.Grow(len(p) + 1)
	for _, s := range out {
		b.WriteByte('/')
		b.WriteString(s)
	}
	if trailing || len(out) == 0 {
		b.WriteByte('/')
	}
	return b.String()
}

// isCanonical reports whether p is already canonical: the common case of a
// client that writes plain paths, checked without allocating.
func isCanonical(p string) bool {
	if p[0] != '/' {
		return false
	}
	segStart := 1
	for i := 1; i <= len(p); i++ {
		if i < len(p) {
			c := p[i]
			if c == '%' || c == '\\' || c < 0x20 || c == 0x7f {
				return false
			}
			if c != '/' {
				continue
			}
		}
		seg := p[segStart:i]
		if seg == "." || seg == ".." || seg == "" && i < len(p) {
			return false
		}
		segStart = i + 1
	}
	return true
}

const upperHex = "0123456789ABCDEF"

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// unreserved is RFC 3986's ALPHA / DIGIT / "-" / "." / "_" / "~".
func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}
