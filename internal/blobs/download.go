package blobs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"sluice/internal/decision"
)

// download is one upstream fetch of a blob into a temporary file, read by
// any number of clients as it grows.
type download struct {
	key        string
	wantDigest string // from the URL, "" if it names none
	cancel     context.CancelFunc
	started    time.Time

	// leader started the download; rec is its detached record, which the
	// download's stages write, and atHeaders rec as it was when headers
	// closed, for the readers' lines.
	leader    *http.Request
	rec       *decision.Record
	atHeaders decision.Record

	mu      sync.Mutex
	cond    *sync.Cond
	headers chan struct{} // closed once status and header are known
	status  int
	header  http.Header
	errBody []byte // a non-200 answer, passed on as it came
	tmpPath string
	written int64
	length  int64 // Content-Length, -1 if unknown
	done    bool
	// streamErr is why the readers' copies are not good either (upstream
	// error, digest or length mismatch); a full disk is not one.
	streamErr error
	readers   int
	// After a write to the store fails (a full disk), the rest of the body
	// goes to the readers already streaming, through relays, and nothing
	// is stored: the clients still get the upstream's bytes.
	relaying bool
	relayAt  int64 // file offset where the relayed bytes begin
	relays   map[*relay]struct{}
}

// closeHeaders publishes status and header, and the record as the
// download's stages left it, to the readers.
func (d *download) closeHeaders() {
	d.atHeaders = *d.rec
	close(d.headers)
}

// relay carries the bytes after relayAt to one reader.
type relay struct {
	ch   chan []byte
	gone chan struct{} // closed when the reader leaves
}

// start returns the download for key, joining one in progress or starting
// it on a context detached from r's: a client that leaves does not abort it.
func (s *Store) start(key, wantDigest string, r *http.Request, next http.Handler) *download {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d, ok := s.downloads[key]; ok {
		d.mu.Lock()
		d.readers++
		d.mu.Unlock()
		return d
	}
	detached, rec := decision.Detach(r.Context())
	ctx, cancel := context.WithCancel(detached)
	d := &download{key: key, wantDigest: wantDigest, cancel: cancel, started: s.opts.Now(), headers: make(chan struct{}), length: -1, readers: 1,
		relays: map[*relay]struct{}{}, leader: r, rec: rec}
	d.cond = sync.NewCond(&d.mu)
	s.downloads[key] = d
	out := r.Clone(ctx)
	out.Method = http.MethodGet
	out.Body, out.ContentLength = http.NoBody, 0
	for _, h := range []string{"Range", "If-Range", "If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since"} {
		out.Header.Del(h)
	}
	go s.fetch(d, out, next)
	return d
}

// fetch runs the upstream request into the temporary file, then verifies
// and commits it. Any failure leaves nothing behind.
func (s *Store) fetch(d *download, out *http.Request, next http.Handler) {
	w := &fileWriter{s: s, d: d, h: sha256.New()}
	err := serve(next, w, out)
	var streamErr error
	if w.f != nil {
		if err == nil && d.length >= 0 && w.n != d.length {
			err = fmt.Errorf("upstream sent %d bytes of %d", w.n, d.length)
		}
		digest := hex.EncodeToString(w.h.Sum(nil))
		if err == nil && d.wantDigest != "" && digest != d.wantDigest {
			err = fmt.Errorf("content digest sha256:%s does not match the sha256:%s its URL names", digest, d.wantDigest)
		}
		streamErr = err
		if err == nil {
			err = w.failed // the store's own failure: the readers' copies are still good
		}
		if err == nil {
			err = w.f.Sync()
		}
		if cerr := w.f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = s.commit(w.f.Name(), &Entry{Key: d.key, Digest: digest, Size: w.n, ContentType: d.header.Get("Content-Type"),
				ETag: d.header.Get("Etag"), LastModified: d.header.Get("Last-Modified")})
		}
		if err != nil {
			os.Remove(w.f.Name())
			s.opts.Log.Warn("blob not stored", "key", d.key, "error", err.Error())
		}
	} else if err == nil && d.status == 0 {
		err = errors.New("upstream sent no response")
	}
	s.m.download(w.f != nil, err)
	s.mu.Lock()
	delete(s.downloads, d.key)
	s.mu.Unlock()
	d.mu.Lock()
	if d.status == 0 {
		d.status, d.errBody = http.StatusBadGateway, []byte(`{"error":"upstream failed","detail":"no response for the blob"}`+"\n")
		d.header = http.Header{"Content-Type": {"application/json"}}
		d.closeHeaders()
	}
	if w.f == nil && err != nil {
		streamErr = err
	}
	d.done, d.streamErr = true, streamErr
	for rl := range d.relays {
		close(rl.ch)
	}
	d.relays = nil
	d.cond.Broadcast()
	d.mu.Unlock()
	d.cancel()
}

// serve runs next, turning its abort (an upstream body that failed midway)
// into an error.
func serve(next http.Handler, w http.ResponseWriter, r *http.Request) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("upstream response aborted: %v", p)
		}
	}()
	next.ServeHTTP(w, r)
	return nil
}

// fileWriter is the ResponseWriter of a download: a 200 goes to the
// temporary file (hashed as it is written), anything else is kept small
// in memory and passed on to the clients.
type fileWriter struct {
	s      *Store
	d      *download
	header http.Header
	f      *os.File
	h      hash.Hash
	n      int64
	failed error
}

func (w *fileWriter) Header() http.Header {
	if w.header == nil {
		w.header = http.Header{}
	}
	return w.header
}

func (w *fileWriter) WriteHeader(code int) {
	d := w.d
	if code < 200 {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.status != 0 {
		return
	}
	d.status, d.header = code, w.Header().Clone()
	if code == http.StatusOK {
		if n, err := strconv.ParseInt(d.header.Get("Content-Length"), 10, 64); err == nil {
			d.length = n
		}
		f, err := os.CreateTemp(filepath.Join(w.s.dir, "tmp"), "blob-*")
		if err != nil {
			w.failed = err
			d.status, d.header = http.StatusBadGateway, http.Header{"Content-Type": {"application/json"}}
			d.errBody = []byte(`{"error":"blob store unavailable","detail":"cannot create a file in the store"}` + "\n")
		} else {
			w.f, d.tmpPath = f, f.Name()
		}
	}
	d.closeHeaders()
}

func (w *fileWriter) Write(p []byte) (int, error) {
	if w.d.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.f == nil {
		w.d.mu.Lock()
		if len(w.d.errBody) < 64<<10 {
			w.d.errBody = append(w.d.errBody, p...)
		}
		w.d.mu.Unlock()
		return len(p), nil
	}
	w.h.Write(p)
	if w.failed != nil {
		w.n += int64(len(p))
		w.relay(p)
		return len(p), nil
	}
	n, err := w.f.Write(p)
	w.n += int64(n)
	w.d.mu.Lock()
	w.d.written = w.n
	if err != nil {
		w.failed = fmt.Errorf("write to the blob store: %w", err)
		w.s.opts.Log.Error("blob store write failed; passing the download through", "key", w.d.key, "error", err.Error())
		w.d.relaying, w.d.relayAt = true, w.n
	}
	w.d.cond.Broadcast()
	w.d.mu.Unlock()
	if err != nil {
		w.n += int64(len(p) - n)
		w.relay(p[n:])
	}
	return len(p), nil
}

// relay hands p to every reader streaming through a relay, each at its
// own pace (a full relay holds the download back).
func (w *fileWriter) relay(p []byte) {
	if len(p) == 0 {
		return
	}
	chunk := bytes.Clone(p)
	w.d.mu.Lock()
	relays := make([]*relay, 0, len(w.d.relays))
	for rl := range w.d.relays {
		relays = append(relays, rl)
	}
	w.d.mu.Unlock()
	for _, rl := range relays {
		select {
		case rl.ch <- chunk:
		case <-rl.gone:
		}
	}
}

// join registers a streaming reader for a relay; nil if the download is
// already relaying (the reader missed bytes that are nowhere now).
func (d *download) join() *relay {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.relaying || d.done {
		return nil
	}
	rl := &relay{ch: make(chan []byte, 16), gone: make(chan struct{})}
	d.relays[rl] = struct{}{}
	return rl
}

func (d *download) drop(rl *relay) {
	close(rl.gone)
	d.mu.Lock()
	delete(d.relays, rl)
	d.mu.Unlock()
}

// leave records that a reader is gone; with AbortWhenAlone the download
// stops when none is left.
func (s *Store) leave(d *download) {
	d.mu.Lock()
	d.readers--
	alone := d.readers == 0 && !d.done
	d.mu.Unlock()
	if alone && s.opts.AbortWhenAlone {
		d.cancel()
	}
}

// Progress is a download in progress as operators see it.
type Progress struct {
	Key string `json:"key"`
	// Bytes is what arrived so far; Length the whole (-1: not told).
	Bytes  int64 `json:"bytes"`
	Length int64 `json:"length"`
	// Rate is the mean rate since it started, in bytes per second.
	Rate    float64   `json:"rate"`
	Readers int       `json:"readers"`
	Started time.Time `json:"started"`
}

// Downloads lists the downloads in progress, the oldest first.
func (s *Store) Downloads() []Progress {
	s.mu.Lock()
	ds := make([]*download, 0, len(s.downloads))
	for _, d := range s.downloads {
		ds = append(ds, d)
	}
	s.mu.Unlock()
	now := s.opts.Now()
	out := make([]Progress, 0, len(ds))
	for _, d := range ds {
		d.mu.Lock()
		p := Progress{Key: d.key, Bytes: d.written, Length: d.length, Readers: d.readers, Started: d.started}
		d.mu.Unlock()
		if secs := now.Sub(d.started).Seconds(); secs > 0 {
			p.Rate = float64(p.Bytes) / secs
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Progress) int { return a.Started.Compare(b.Started) })
	return out
}
