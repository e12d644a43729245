package blobs

import (
	"context"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestDiskFullPassesThrough: when the store cannot write (here the kernel
// refuses to let any file grow past 1 MiB, as a full disk would), the
// client still gets the whole upstream file, and nothing is stored. It runs
// in a child process so that the file size limit binds nothing else.
func TestDiskFullPassesThrough(t *testing.T) {
	if os.Getenv("SLUICE_FSIZE_CHILD") != "1" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestDiskFullPassesThrough$", "-test.v")
		cmd.Env = append(os.Environ(), "SLUICE_FSIZE_CHILD=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		return
	}
	dir := t.TempDir()             // created before the limit
	signal.Ignore(syscall.SIGXFSZ) // a write past the limit then fails with EFBIG
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: 1 << 20, Max: 1 << 20}); err != nil {
		t.Fatalf("setrlimit: %v", err)
	}
	body := randomBytes(4 << 20)
	o := newOrigin(t)
	path := blobPath(body)
	o.put(path, body)
	s := openStore(t, dir, 1<<30)
	w := get(s, matcher(t), o.next, context.Background(), "GET", path)
	if w.aborted || w.n != int64(len(body)) || w.digest() != digestOf(body) {
		t.Errorf("with the store failing at 1 MiB: client got %d of %d bytes, aborted %v; want the whole file", w.n, len(body), w.aborted)
	}
	if _, files := s.Size(); files != 0 || testutil.ToFloat64(s.m.downloads.WithLabelValues("failed")) != 1 {
		t.Errorf("%d files stored, %v failed downloads; want the write failure seen and nothing stored",
			files, testutil.ToFloat64(s.m.downloads.WithLabelValues("failed")))
	}
}
