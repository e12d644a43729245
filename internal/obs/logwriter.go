package obs

import (
	"bufio"
	"io"
	"sync"
	"time"
)

// LogWriter buffers log lines and writes them out at most delay after the
// first one, or when the buffer fills: one write(2) for many access-log
// lines instead of one each, which at tens of thousands of requests a
// second is a measurable share of the CPU. Flush writes out the rest; it
// must be called before the process exits.
type LogWriter struct {
	mu      sync.Mutex
	w       *bufio.Writer
	delay   time.Duration
	pending *time.Timer
}

// NewLogWriter returns a LogWriter over w.
func NewLogWriter(w io.Writer, delay time.Duration) *LogWriter {
	return &LogWriter{w: bufio.NewWriterSize(w, 64<<10), delay: delay}
}

// Write buffers p (one log line) and schedules a flush.
func (l *LogWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.w.Write(p)
	if l.pending == nil {
		l.pending = time.AfterFunc(l.delay, func() { l.Flush() })
	}
	return n, err
}

// Flush writes out everything buffered.
func (l *LogWriter) Flush() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pending != nil {
		l.pending.Stop()
		l.pending = nil
	}
	return l.w.Flush()
}
