package proxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

func TestReadProxyHeader(t *testing.T) {
	v2 := func(cmd, fam byte, addr []byte) []byte {
		b := append([]byte{}, proxyV2Sig...)
		b = append(b, 0x20|cmd, fam, 0, 0)
		binary.BigEndian.PutUint16(b[14:], uint16(len(addr)))
		return append(b, addr...)
	}
	ipv4 := append(append([]byte{198, 51, 100, 7, 127, 0, 0, 1}, 0x15, 0xb3), 0, 80)
	for _, tt := range []struct {
		name string
		in   []byte
		want string // "" for no address
		err  bool
	}{
		{"v1 TCP4", []byte("PROXY TCP4 198.51.100.7 127.0.0.1 5555 80\r\nGET"), "198.51.100.7:5555", false},
		{"v1 TCP6", []byte("PROXY TCP6 2001:db8::7 ::1 5555 80\r\nGET"), "[2001:db8::7]:5555", false},
		{"v1 UNKNOWN", []byte("PROXY UNKNOWN\r\nGET"), "", false},
		{"v2 TCP4", append(v2(1, 0x11, ipv4), "GET"...), "198.51.100.7:5555", false},
		{"v2 LOCAL", append(v2(0, 0, nil), "GET"...), "", false},
		{"no header", []byte("GET / HTTP/1.1\r\n\r\n"), "", true},
		{"v1 garbage", []byte("PROXY TCP4 nothere\r\n"), "", true},
	} {
		br := bufio.NewReader(bytes.NewReader(tt.in))
		addr, err := readProxyHeader(br)
		got := ""
		if addr != nil {
			got = addr.String()
		}
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("%s: %q, %v; want %q, error %v", tt.name, got, err, tt.want, tt.err)
		}
		if err == nil {
			if rest, _ := br.Peek(3); !strings.HasPrefix(string(rest), "GET") {
				t.Errorf("%s: the request after the header is %q", tt.name, rest)
			}
		}
	}
}
