package proxy

import (
	"bytes"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"sluice/internal/decision"
	"sluice/internal/obs"
)

// MaxForwards is the stage that honours Max-Forwards on OPTIONS and TRACE
// (RFC 9110 section 7.6.2): at 0 sluice is the final recipient and answers
// itself; above it, the value is decremented before the request goes on.
// It sits after the rules, so a rule that refuses a method still does,
// and before the budget, so an answer sluice gives itself spends none.
func MaxForwards(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodOptions && r.Method != http.MethodTrace {
			next.ServeHTTP(w, r)
			return
		}
		vs := r.Header.Values("Max-Forwards")
		if len(vs) == 0 {
			next.ServeHTTP(w, r)
			return
		}
		n, err := strconv.ParseUint(strings.TrimSpace(vs[0]), 10, 63)
		if len(vs) > 1 || err != nil {
			obs.WriteError(w, r, &obs.Error{Status: http.StatusBadRequest, Msg: "bad Max-Forwards",
				Host: decision.From(r.Context()).Target.String(), Detail: "Max-Forwards must be one non-negative integer"})
			return
		}
		if n > 0 {
			r.Header.Set("Max-Forwards", strconv.FormatUint(n-1, 10))
			next.ServeHTTP(w, r)
			return
		}
		decision.From(r.Context()).Reason = "Max-Forwards: 0, answered by sluice"
		if r.Method == http.MethodOptions {
			w.Header().Set("Allow", forwardedMethods)
			w.Header().Set("Content-Length", "0")
			w.WriteHeader(http.StatusOK)
			return
		}
		body := traceEcho(r)
		w.Header().Set("Content-Type", "message/http")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		w.Write(body)
	})
}

// forwardedMethods are the methods sluice passes on, for an OPTIONS it answers.
const forwardedMethods = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE"

// traceEcho is the request message as sluice received it, for a TRACE it
// answers, without the fields that carry credentials (section 9.3.8): a
// script that can send TRACE must not read back cookies it cannot see.
func traceEcho(r *http.Request) []byte {
	var b bytes.Buffer
	b.WriteString(r.Method + " " + r.URL.RequestURI() + " " + r.Proto + "\r\n")
	b.WriteString("Host: " + r.Host + "\r\n")
	names := make([]string, 0, len(r.Header))
	for name := range r.Header {
		if !obs.SecretName(name) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		for _, v := range r.Header[name] {
			b.WriteString(name + ": " + v + "\r\n")
		}
	}
	b.WriteString("\r\n")
	return b.Bytes()
}

// via is this hop's Via member (RFC 9110 section 7.6.3) for a message
// received in HTTP/major.minor: "1.1 sluice", "2 sluice". sluice names
// itself by a pseudonym, never its host or port.
func via(major, minor int) string {
	switch {
	case major >= 2:
		return strconv.Itoa(major) + " sluice"
	case major == 1 && minor == 0:
		return "1.0 sluice"
	}
	return "1.1 sluice"
}
