// Package testnetns builds small networks of Linux network namespaces for
// tests (root only): namespaces joined by veth pairs, with addresses the
// test chooses, all removed when the test ends, also when it fails. The
// test process opens sockets inside a namespace by switching one locked
// thread into it; a socket stays in the namespace it was made in.
package testnetns

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Net is a set of namespaces of one test.
type Net struct {
	t      testing.TB
	ip     string
	suffix string
}

// New returns an empty network whose names end in a suffix of this
// process's, so that concurrent test binaries do not meet.
func New(t testing.TB, ipBin string) *Net {
	return &Net{t: t, ip: ipBin, suffix: fmt.Sprintf("%d", os.Getpid()%100000)}
}

// Name is the namespace name of short.
func (n *Net) Name(short string) string { return "sluice-" + short + "-" + n.suffix }

// Run runs ip with args, failing the test on error.
func (n *Net) Run(args ...string) {
	n.t.Helper()
	if out, err := exec.Command(n.ip, args...).CombinedOutput(); err != nil {
		n.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// Add creates the namespaces, with their loopback up; the test's cleanup
// deletes them.
func (n *Net) Add(shorts ...string) {
	n.t.Helper()
	for _, s := range shorts {
		name := n.Name(s)
		exec.Command(n.ip, "netns", "del", name).Run() // a crashed earlier run's
		n.Run("netns", "add", name)
		n.t.Cleanup(func() { exec.Command(n.ip, "netns", "del", name).Run() })
		n.Run("-n", name, "link", "set", "lo", "up")
	}
}

// Link joins namespaces a and b by a veth pair with the addresses (CIDR)
// given for each side.
func (n *Net) Link(a, aAddr, b, bAddr string) {
	n.t.Helper()
	ea, eb := "v"+a[:1]+b[:1]+n.suffix, "v"+b[:1]+a[:1]+n.suffix
	n.Run("link", "add", ea, "netns", n.Name(a), "type", "veth", "peer", "name", eb, "netns", n.Name(b))
	for _, side := range []struct{ ns, dev, addr string }{{a, ea, aAddr}, {b, eb, bAddr}} {
		for _, addr := range strings.Split(side.addr, ",") {
			n.Run("-n", n.Name(side.ns), "addr", "add", addr, "dev", side.dev)
		}
		n.Run("-n", n.Name(side.ns), "link", "set", side.dev, "up")
	}
}

// Exec returns a command that runs inside namespace short.
func (n *Net) Exec(short string, name string, args ...string) *exec.Cmd {
	return exec.Command(n.ip, append([]string{"netns", "exec", n.Name(short), name}, args...)...)
}

// In runs f on a thread switched into namespace short; sockets f opens
// belong to it.
func (n *Net) In(short string, f func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + n.Name(short))
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", n.Name(short), err)
	}
	ferr := f()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("back from %s: %w (the thread stays locked and dies with its goroutine)", n.Name(short), err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// Listen opens a TCP listener in namespace short.
func (n *Net) Listen(short, network, addr string) net.Listener {
	n.t.Helper()
	var ln net.Listener
	if err := n.In(short, func() (err error) { ln, err = net.Listen(network, addr); return err }); err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { ln.Close() })
	return ln
}

// ListenPacket opens a UDP socket in namespace short.
func (n *Net) ListenPacket(short, network, addr string) net.PacketConn {
	n.t.Helper()
	var pc net.PacketConn
	if err := n.In(short, func() (err error) { pc, err = net.ListenPacket(network, addr); return err }); err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { pc.Close() })
	return pc
}

// Dialer returns a DialContext that dials from namespace short, each
// connect bounded by timeout.
func (n *Net) Dialer(short string, timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := n.In(short, func() (err error) {
			c, err = (&net.Dialer{Timeout: timeout}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}
