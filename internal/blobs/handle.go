package blobs

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"sluice/internal/config"
	"sluice/internal/decision"
	"sluice/internal/obs"
)

// Matcher says which requests to a host are for immutable files. It is
// immutable; a nil Matcher matches nothing.
type Matcher struct {
	patterns        []*regexp.Regexp
	withCredentials bool
}

// CompilePatterns compiles path patterns; an error names the pattern's index.
func CompilePatterns(ps []string) ([]*regexp.Regexp, error) {
	out := make([]*regexp.Regexp, 0, len(ps))
	for i, p := range ps {
		re, err := regexp.Compile(p)
		if err != nil {
			return nil, config.Under(err, strconv.Itoa(i))
		}
		out = append(out, re)
	}
	return out, nil
}

// NewMatcher matches the global patterns and a host's extra ones.
func NewMatcher(global, host []*regexp.Regexp, withCredentials bool) *Matcher {
	return &Matcher{patterns: append(slices.Clip(global), host...), withCredentials: withCredentials}
}

// Match reports whether r asks for an immutable file.
func (m *Matcher) Match(r *http.Request) bool {
	if m == nil || r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	for _, re := range m.patterns {
		if re.MatchString(r.URL.Path) {
			return true
		}
	}
	return false
}

// urlDigest returns the sha256 hex digest an OCI blob URL names, or "".
func urlDigest(path string) string {
	i := strings.LastIndex(path, "/blobs/sha256:")
	if i < 0 {
		return ""
	}
	if d := path[i+len("/blobs/sha256:"):]; validDigest(d) {
		return d
	}
	return ""
}

// Handle serves r (matched by m) from the store, or downloads it once
// through next, streaming to every client that asks meanwhile.
func (s *Store) Handle(w http.ResponseWriter, r *http.Request, host string, m *Matcher, next http.Handler) {
	digest := urlDigest(r.URL.Path)
	// A digest-named blob is the same for everyone (the digest proves the
	// content); other files fetched with credentials may be personal.
	if digest == "" && !m.withCredentials && obs.HasCredentials(r) {
		s.bypass(w, r, next)
		return
	}
	key := host + storeKey(r.URL)
	if e := s.lookup(key, digest); e != nil {
		if f, err := s.open(e); err == nil {
			defer f.Close()
			s.serveFile(w, r, e, f, decision.Hit)
			return
		}
	}
	if r.Method == http.MethodHead || r.Header.Get("Range") != "" {
		s.bypass(w, r, next) // not worth a whole download; a GET will fill it
		return
	}
	d := s.start(key, digest, r, next)
	defer s.leave(d)
	s.stream(w, r, d, next)
}

func (s *Store) bypass(w http.ResponseWriter, r *http.Request, next http.Handler) {
	s.m.result(decision.Bypass.String())
	decision.From(r.Context()).Cache = decision.Bypass
	w.Header().Set("X-Cache", "BYPASS")
	next.ServeHTTP(w, r)
}

// serveFile answers from a stored file: Range, HEAD and conditional
// requests through http.ServeContent, which uses sendfile where the
// connection allows it (plain HTTP).
func (s *Store) serveFile(w http.ResponseWriter, r *http.Request, e *Entry, f io.ReadSeeker, result decision.CacheResult) {
	s.m.result(result.String())
	decision.From(r.Context()).Cache = result
	h := w.Header()
	if e.ContentType != "" {
		h.Set("Content-Type", e.ContentType)
	} else {
		h["Content-Type"] = nil // never sniffed
	}
	etag := e.ETag
	if etag == "" {
		etag = `"sha256:` + e.Digest + `"`
	}
	h.Set("Etag", etag)
	h.Set("Docker-Content-Digest", "sha256:"+e.Digest)
	h.Set("X-Cache", strings.ToUpper(result.String()))
	lm, _ := http.ParseTime(e.LastModified)
	http.ServeContent(w, r, "", lm, f)
}

// stream copies a download to one client as the file grows. The last byte
// is held back until the download is verified, so a client whose blob
// fails verification sees an aborted download, never a complete wrong one.
func (s *Store) stream(w http.ResponseWriter, r *http.Request, d *download, next http.Handler) {
	rec := decision.From(r.Context())
	select {
	case <-d.headers:
		rec.Report(&d.atHeaders, d.leader == r)
	case <-r.Context().Done():
		rec.Status, rec.Reason = obs.StatusClientClosed, "client left before the blob download started"
		return
	}
	stop := context.AfterFunc(r.Context(), func() { d.mu.Lock(); d.cond.Broadcast(); d.mu.Unlock() })
	defer stop()

	d.mu.Lock()
	status, header, errBody := d.status, d.header, d.errBody
	for status == http.StatusOK && d.tmpPath == "" && !d.done {
		d.cond.Wait()
	}
	d.mu.Unlock()
	if status != http.StatusOK {
		s.m.result(decision.Miss.String())
		rec.Cache = decision.Miss
		copyHeader(w.Header(), header)
		w.Header().Set("X-Cache", "MISS")
		w.WriteHeader(status)
		w.Write(errBody)
		return
	}
	f, err := d.openTemp()
	if err != nil { // the download finished (or failed) before this reader opened it
		s.afterDownload(w, r, d, next)
		return
	}
	defer f.Close()
	rl := d.join()
	if rl == nil {
		s.afterDownload(w, r, d, next)
		return
	}
	defer d.drop(rl)
	s.m.result(decision.Miss.String())
	rec.Cache = decision.Miss
	copyHeader(w.Header(), header)
	w.Header().Set("X-Cache", "MISS")
	// The upstream's digest claim goes out only where the download is
	// verified against it (a digest-named URL: a mismatch aborts it); a
	// stored file's is the digest sluice computed.
	if claim := w.Header().Get("Docker-Content-Digest"); claim != "" && (d.wantDigest == "" || claim != "sha256:"+d.wantDigest) {
		w.Header().Del("Docker-Content-Digest")
	}
	if d.length >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(d.length, 10))
	}
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	buf := make([]byte, 256<<10)
	var pos int64
	for {
		d.mu.Lock()
		for !d.done && !d.relaying && pos >= d.written-1 && r.Context().Err() == nil {
			d.cond.Wait()
		}
		limit, done, relaying := d.written, d.done, d.relaying
		if relaying {
			limit = d.relayAt
		}
		streamErr := d.streamErr
		d.mu.Unlock()
		if r.Context().Err() != nil {
			rec.Err = r.Context().Err()
			return
		}
		if done && streamErr != nil {
			// Not completed with unverified bytes: abort the response.
			rec.Err = streamErr
			panic(http.ErrAbortHandler)
		}
		if !done && !relaying {
			limit-- // held back until verified
		}
		for pos < limit {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), limit-pos)], pos)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					return
				}
				pos += int64(n)
			}
			if err != nil && err != io.EOF {
				rec.Err = err
				panic(http.ErrAbortHandler)
			}
		}
		rc.Flush()
		if relaying {
			s.streamRelay(w, r, d, rl)
			return
		}
		if done {
			return
		}
	}
}

// streamRelay passes on the bytes that could not be stored, holding the
// last chunk back until the download is verified.
func (s *Store) streamRelay(w http.ResponseWriter, r *http.Request, d *download, rl *relay) {
	rec := decision.From(r.Context())
	rec.Reason = "blob store write failed; passed through"
	var held []byte
	for {
		select {
		case chunk, ok := <-rl.ch:
			if !ok {
				d.mu.Lock()
				streamErr := d.streamErr
				d.mu.Unlock()
				if streamErr != nil {
					rec.Err = streamErr
					panic(http.ErrAbortHandler)
				}
				w.Write(held)
				return
			}
			if held != nil {
				if _, err := w.Write(held); err != nil {
					return
				}
			}
			held = chunk
		case <-r.Context().Done():
			return
		}
	}
}

// afterDownload answers a reader that arrived as the download ended: from
// the stored file, or, if the store could not keep it, from the upstream.
// A download that failed on the upstream's side (its bytes did not match
// the digest, or broke off) is answered 502: fetching the same bytes again
// to pass them on unverified is what the store is there to prevent.
func (s *Store) afterDownload(w http.ResponseWriter, r *http.Request, d *download, next http.Handler) {
	d.mu.Lock()
	for !d.done {
		d.cond.Wait()
	}
	streamErr := d.streamErr
	d.mu.Unlock()
	if streamErr != nil {
		obs.WriteError(w, r, &obs.Error{Status: http.StatusBadGateway, Msg: "blob download failed",
			Detail: streamErr.Error(), ProxyStatus: "destination_unavailable", Err: streamErr})
		return
	}
	if e := s.lookup(d.key, d.wantDigest); e != nil {
		if f, err := s.open(e); err == nil {
			defer f.Close()
			s.serveFile(w, r, e, f, decision.Miss) // this request's download, served from where it landed
			return
		}
	}
	s.bypass(w, r, next)
}

func (d *download) openTemp() (*os.File, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.tmpPath == "" || d.done {
		return nil, os.ErrNotExist
	}
	// Opened before the rename at commit, the handle stays valid after it.
	return os.Open(d.tmpPath)
}

func copyHeader(dst, src http.Header) {
	for k, vs := range src {
		switch k {
		case "Content-Length", "X-Cache", "Set-Cookie":
			continue
		}
		dst[k] = vs
	}
}

// storeKey is a URL as the store keys it: its path and query without the
// parameters that carry credentials (X-Amz-Signature, token, ...), which are
// the client's, not the file's, and are never persisted or logged.
func storeKey(u *url.URL) string {
	if u.RawQuery == "" {
		return u.EscapedPath()
	}
	q := u.Query()
	for name := range q {
		if obs.SecretName(name) {
			q.Del(name)
		}
	}
	if len(q) == 0 {
		return u.EscapedPath()
	}
	return u.EscapedPath() + "?" + q.Encode()
}
