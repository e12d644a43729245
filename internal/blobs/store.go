// Package blobs is sluice's on-disk store of immutable files: container
// layers, .deb/.rpm/.apk packages and release archives. Each crosses the
// internet once; every later request is served from disk.
//
// Files are content-addressed (DATA_DIR/blobs/sha256/xx/<hex>), written to
// a temporary file, synced and renamed into place, and indexed by URL in
// index.json, which survives restarts. A blob whose URL names its digest
// (OCI) is verified while it streams; on mismatch nothing is stored and the
// clients' downloads are aborted, never completed with wrong bytes.
// Concurrent requests for one blob share one upstream download and read
// the file as it grows.
//
// Config keys: blobs.max_bytes, blobs.patterns, blobs.when_clients_leave,
// blobs.scrub_every;
// per host: blobs (off, or {patterns, with_credentials}).
//
// Metrics: sluice_blobs_requests_total{result}, sluice_blobs_bytes,
// sluice_blobs_files, sluice_blobs_downloads_total{outcome},
// sluice_blobs_scrubbed_total{result}.
package blobs

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/prometheus/client_golang/prometheus"

	"sluice/internal/atomicfile"
	"sluice/internal/metrics"
)

// Options configures a Store.
type Options struct {
	// MaxBytes caps the files on disk.
	MaxBytes int64
	// AbortWhenAlone stops a download when its last client leaves.
	AbortWhenAlone bool
	Log            *slog.Logger
	Now            func() time.Time
	Registerer     prometheus.Registerer
}

// Store is the blob store. It is safe for concurrent use.
type Store struct {
	dir  string
	opts Options

	mu        sync.Mutex
	entries   *simplelru.LRU[string, *Entry] // by URL key; bounded by size, not count
	refs      map[string]int                 // digest -> entries using its file
	size      int64                          // bytes of distinct files
	downloads map[string]*download

	m *storeMetrics
}

// Entry is one stored URL.
type Entry struct {
	Key          string    `json:"key"`
	Digest       string    `json:"digest"` // hex sha256 of the content
	Size         int64     `json:"size"`
	ContentType  string    `json:"content_type,omitempty"`
	ETag         string    `json:"etag,omitempty"`
	LastModified string    `json:"last_modified,omitempty"`
	Used         time.Time `json:"used"`

	// verified is when the file was last hashed and found right, as its
	// modification time then: a file changed since (even at the same size)
	// is hashed again before it is served.
	verified time.Time
}

// Open loads (or creates) the store under dir. Temporary files left by a
// crash are removed: a half-written file is never served.
func Open(dir string, opts Options) (*Store, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	for _, d := range []string{dir, filepath.Join(dir, "tmp"), filepath.Join(dir, "sha256")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("blob store: %w", err)
		}
	}
	if tmps, err := os.ReadDir(filepath.Join(dir, "tmp")); err == nil {
		for _, t := range tmps {
			os.Remove(filepath.Join(dir, "tmp", t.Name()))
		}
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	s := &Store{dir: dir, opts: opts, refs: map[string]int{}, downloads: map[string]*download{}, m: m}
	if s.entries, err = simplelru.NewLRU(math.MaxInt, s.dropped); err != nil {
		return nil, err
	}
	if err := s.load(); err != nil {
		return nil, err
	}
	inProgress := func(f func([]Progress) float64) func() float64 { return func() float64 { return f(s.Downloads()) } }
	err = metrics.Register(opts.Registerer,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "sluice", Subsystem: "blobs", Name: "downloads_in_progress",
			Help: "Blob downloads in progress."}, inProgress(func(ps []Progress) float64 { return float64(len(ps)) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "sluice", Subsystem: "blobs", Name: "download_bytes",
			Help: "Bytes the downloads in progress have received so far."}, inProgress(func(ps []Progress) float64 {
			var n int64
			for _, p := range ps {
				n += p.Bytes
			}
			return float64(n)
		})))
	return s, err
}

func (s *Store) indexPath() string { return filepath.Join(s.dir, "index.json") }

// validDigest reports whether d is a sha256 digest in lower-case hex.
func validDigest(d string) bool {
	return len(d) == 64 && strings.Trim(d, "0123456789abcdef") == ""
}

func (s *Store) filePath(digest string) string {
	return filepath.Join(s.dir, "sha256", digest[:2], digest)
}

// load reads the index, keeping the entries whose file is there with the
// recorded size; their content is hashed again before it is first served.
func (s *Store) load() error {
	data, err := os.ReadFile(s.indexPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var es []*Entry
	if err := json.Unmarshal(data, &es); err != nil {
		s.opts.Log.Warn("blob index unreadable; starting empty", "path", s.indexPath(), "error", err.Error())
		return nil
	}
	// A tampered index must neither crash the store nor name a file
	// outside it (a digest of "../../x"): only well-formed entries count.
	es = slices.DeleteFunc(es, func(e *Entry) bool {
		bad := e == nil || !validDigest(e.Digest) || e.Size < 0 || e.Key == ""
		if bad {
			s.opts.Log.Warn("blob index entry ignored: not a valid entry", "path", s.indexPath())
		}
		return bad
	})
	slices.SortFunc(es, func(a, b *Entry) int { return a.Used.Compare(b.Used) }) // the most recent added last
	for _, e := range es {
		fi, err := os.Stat(s.filePath(e.Digest))
		if err != nil || fi.Size() != e.Size {
			continue
		}
		s.addLocked(e)
	}
	s.m.update(s.size, len(s.refs))
	return nil
}

// save writes the index atomically. Called with the lock held.
func (s *Store) saveLocked() {
	data, err := json.Marshal(s.entries.Values())
	if err == nil {
		err = atomicfile.Write(s.indexPath(), data, 0o600)
	}
	if err != nil {
		s.opts.Log.Error("blob index not saved", "error", err.Error())
	}
}

func (s *Store) addLocked(e *Entry) {
	s.entries.Remove(e.Key)
	s.entries.Add(e.Key, e)
	if s.refs[e.Digest] == 0 {
		s.size += e.Size
	}
	s.refs[e.Digest]++
}

// removeLocked drops an entry, and its file when no other entry uses it.
func (s *Store) removeLocked(e *Entry) {
	if cur, ok := s.entries.Peek(e.Key); ok && cur == e {
		s.entries.Remove(e.Key)
	}
}

// dropped is called, with the lock held, for every entry that leaves the
// index: its file goes when no other entry uses it.
func (s *Store) dropped(_ string, e *Entry) {
	if s.refs[e.Digest]--; s.refs[e.Digest] <= 0 {
		delete(s.refs, e.Digest)
		s.size -= e.Size
		os.Remove(s.filePath(e.Digest))
	}
}

// lookup returns the entry for key (or, for a digest-named blob, any entry
// with that digest) and marks it used.
func (s *Store) lookup(key, digest string) *Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, _ := s.entries.Get(key)
	if e == nil && digest != "" && s.refs[digest] > 0 {
		for _, x := range s.entries.Values() {
			if x.Digest == digest {
				e = x
				s.entries.Get(x.Key) // used now
				break
			}
		}
	}
	if e != nil {
		e.Used = s.opts.Now()
	}
	return e
}

// open returns the entry's file after checking its size, and its content
// once per process; a file that fails either is dropped (and refetched).
func (s *Store) open(e *Entry) (*os.File, error) {
	f, err := os.Open(s.filePath(e.Digest))
	var mod time.Time
	if err == nil {
		var fi os.FileInfo
		if fi, err = f.Stat(); err == nil {
			mod = fi.ModTime()
			if fi.Size() != e.Size {
				err = fmt.Errorf("size %d, want %d", fi.Size(), e.Size)
			}
		}
	}
	s.mu.Lock()
	verified := e.verified
	s.mu.Unlock()
	if err == nil && (verified.IsZero() || !mod.Equal(verified)) {
		if err = contentMatches(f, e.Digest); err == nil {
			_, err = f.Seek(0, io.SeekStart)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		if f != nil {
			f.Close()
		}
		s.opts.Log.Warn("blob dropped: the file on disk does not match", "key", e.Key, "error", err.Error())
		s.dropDigestLocked(e.Digest)
		s.saveLocked()
		return nil, err
	}
	e.verified = mod
	return f, nil
}

// dropDigestLocked removes every entry of a digest (its file is bad).
func (s *Store) dropDigestLocked(digest string) {
	for _, e := range s.entries.Values() {
		if e.Digest == digest {
			s.removeLocked(e)
		}
	}
	os.Remove(s.filePath(digest))
	s.m.update(s.size, len(s.refs))
}

// commit moves a verified temporary file into place and indexes it, then
// evicts the least recently used files beyond MaxBytes.
func (s *Store) commit(tmp string, e *Entry) error {
	dst := s.filePath(e.Digest)
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e.Used = s.opts.Now()
	if fi, err := os.Stat(dst); err == nil {
		e.verified = fi.ModTime()
	}
	s.addLocked(e)
	for s.size > s.opts.MaxBytes && s.entries.Len() > 1 {
		s.entries.RemoveOldest()
		s.m.evictions.Inc()
	}
	s.saveLocked()
	s.m.update(s.size, len(s.refs))
	return nil
}

// List returns the entries, most recently used first.
func (s *Store) List() []Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	es := s.entries.Values() // oldest first
	out := make([]Entry, 0, len(es))
	for _, e := range slices.Backward(es) {
		out = append(out, *e)
	}
	return out
}

// Size returns the bytes on disk and the number of files.
func (s *Store) Size() (int64, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.size, len(s.refs)
}

// Remove drops the entries whose key or digest is id; "" drops all. It
// returns how many entries went.
func (s *Store) Remove(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, e := range s.entries.Values() {
		if id == "" || e.Key == id || e.Digest == id || "sha256:"+e.Digest == id {
			s.removeLocked(e)
			n++
		}
	}
	s.saveLocked()
	s.m.update(s.size, len(s.refs))
	return n
}

// Scrub hashes every stored file, whatever its modification time says,
// and drops each one that is missing or does not match its digest (bit
// rot, or a change that kept the time), so that it is fetched again. It
// holds the store's lock only between files and stops early when stop is
// closed. It returns how many files it hashed and dropped.
func (s *Store) Scrub(stop <-chan struct{}) (checked, dropped int) {
	s.mu.Lock()
	digests := make([]string, 0, len(s.refs))
	for d := range s.refs {
		digests = append(digests, d)
	}
	s.mu.Unlock()
	for _, d := range digests {
		select {
		case <-stop:
			return checked, dropped
		default:
		}
		err := hashMatches(s.filePath(d), d)
		checked++
		if err == nil {
			s.m.scrubbed.WithLabelValues("ok").Inc()
			continue
		}
		s.mu.Lock()
		if s.refs[d] > 0 { // not replaced or evicted meanwhile
			s.opts.Log.Warn("blob dropped by the scrub: the file on disk does not match", "digest", d, "error", err.Error())
			s.dropDigestLocked(d)
			s.saveLocked()
			dropped++
			s.m.scrubbed.WithLabelValues("dropped").Inc()
		}
		s.mu.Unlock()
	}
	return checked, dropped
}

// hashMatches reports why the file at path does not hash to digest (nil: it does).
func hashMatches(path, digest string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return contentMatches(f, digest)
}

// contentMatches reports why what r holds does not hash to digest (nil: it does).
func contentMatches(r io.Reader, digest string) error {
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != digest {
		return fmt.Errorf("content digest %s, want %s", got, digest)
	}
	return nil
}

// GC removes files that no entry uses (left by an older index) and stale
// temporary files. It returns the bytes freed.
func (s *Store) GC() (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var freed int64
	err := filepath.WalkDir(filepath.Join(s.dir, "sha256"), func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if s.refs[d.Name()] == 0 {
			if fi, err := d.Info(); err == nil {
				freed += fi.Size()
			}
			os.Remove(path)
		}
		return nil
	})
	if tmps, _ := os.ReadDir(filepath.Join(s.dir, "tmp")); len(s.downloads) == 0 {
		for _, t := range tmps {
			os.Remove(filepath.Join(s.dir, "tmp", t.Name()))
		}
	}
	return freed, err
}
