package obs

import (
	"io"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// field is one key of the access line: a string, an integer or a fraction.
type field struct {
	key  string
	s    string
	n    float64
	kind uint8
}

const (
	kindString = iota
	kindInt
	kindFloat
)

func str(k, v string) field          { return field{key: k, s: v, kind: kindString} }
func num(k string, v float64) field  { return field{key: k, n: v, kind: kindInt} }
func frac(k string, v float64) field { return field{key: k, n: v, kind: kindFloat} }

func (f field) attr() slog.Attr {
	switch f.kind {
	case kindInt:
		return slog.Int64(f.key, int64(f.n))
	case kindFloat:
		return slog.Float64(f.key, f.n)
	}
	return slog.String(f.key, f.s)
}

var linePool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// writeJSONLine writes the access line as slog's JSON handler does: time,
// level and msg, then the fields, one line, one Write to each of ws.
func writeJSONLine(level slog.Level, fs []field, ws ...io.Writer) {
	if len(ws) == 0 {
		return
	}
	bp := linePool.Get().(*[]byte)
	b := append((*bp)[:0], `{"time":"`...)
	b = appendRFC3339Nano(b, time.Now())
	b = append(b, `","level":"`...)
	b = append(b, level.String()...)
	b = append(b, `","msg":"request"`...)
	for _, f := range fs {
		b = append(b, ',', '"')
		b = append(b, f.key...)
		b = append(b, '"', ':')
		switch f.kind {
		case kindInt:
			b = strconv.AppendInt(b, int64(f.n), 10)
		case kindFloat:
			b = appendJSONFloat(b, f.n)
		default:
			b = appendJSONString(b, f.s)
		}
	}
	b = append(b, '}', '\n')
	for _, w := range ws {
		w.Write(b)
	}
	*bp = b
	linePool.Put(bp)
}

// second is a second's time formatted, but for the fraction: the date, time
// of day and zone are the same for every access line within it.
type second struct {
	unix       int64
	loc        *time.Location
	head, zone string
}

var lastSecond atomic.Pointer[second]

// appendRFC3339Nano appends t as t.AppendFormat(b, time.RFC3339Nano) does,
// formatting the date and zone once a second rather than on every line.
func appendRFC3339Nano(b []byte, t time.Time) []byte {
	s := lastSecond.Load()
	if s == nil || s.unix != t.Unix() || s.loc != t.Location() {
		s = &second{unix: t.Unix(), loc: t.Location(), head: t.Format("2006-01-02T15:04:05"), zone: t.Format("Z07:00")}
		lastSecond.Store(s)
	}
	b = append(b, s.head...)
	if ns := t.Nanosecond(); ns != 0 {
		var digits [10]byte
		digits[0] = '.'
		for i := 9; i > 0; i-- {
			digits[i] = byte('0' + ns%10)
			ns /= 10
		}
		n := 10
		for digits[n-1] == '0' {
			n--
		}
		b = append(b, digits[:n]...)
	}
	return append(b, s.zone...)
}

// appendJSONFloat formats as encoding/json does: plain decimals, exponents
// only for very small or large magnitudes; NaN and infinities (which JSON
// has not) as 0.
func appendJSONFloat(b []byte, f float64) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(b, '0')
	}
	if a := math.Abs(f); a != 0 && (a < 1e-6 || a >= 1e21) {
		return strconv.AppendFloat(b, f, 'e', -1, 64)
	}
	return strconv.AppendFloat(b, f, 'f', -1, 64)
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s quoted and escaped as JSON: quotes,
// backslashes and control characters escaped, invalid UTF-8 replaced.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&15])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
