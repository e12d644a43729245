package proxy_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"sluice/internal/testenv"
	"sluice/internal/testpki"
)

// TestRegistryPullThroughSluice pulls an image from a real registry
// (Debian's docker-registry) through sluice with a real client (skopeo),
// twice: the second pull takes every blob from sluice's store.
func TestRegistryPullThroughSluice(t *testing.T) {
	registry := testenv.RequireTool(t, "docker-registry")
	skopeo := testenv.RequireTool(t, "skopeo")
	dir := t.TempDir()
	regCA := testpki.NewCA(t, "registry CA")
	cert := regCA.Leaf(t, "registry.test", "127.0.0.1")
	writePair(t, dir, cert.Certificate[0], cert.PrivateKey)
	port := testenv.FreePort(t)
	os.WriteFile(filepath.Join(dir, "config.yml"), []byte(fmt.Sprintf(`version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: %s/data}}
http:
  addr: 127.0.0.1:%d
  tls: {certificate: %s/cert.pem, key: %s/key.pem}
`, dir, port, dir, dir)), 0o644)
	reg := exec.Command(registry, "serve", filepath.Join(dir, "config.yml"))
	reg.Stdout, reg.Stderr = t.Output(), t.Output()
	if err := reg.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Process.Kill(); reg.Wait() })
	testenv.WaitListening(t, fmt.Sprintf("127.0.0.1:%d", port))

	regCADir := filepath.Join(dir, "registry-ca")
	os.MkdirAll(regCADir, 0o755)
	os.WriteFile(filepath.Join(regCADir, "ca.crt"), regCA.CertPEM, 0o644)
	layout := writeOCILayout(t, filepath.Join(dir, "image"))
	push := exec.Command(skopeo, "copy", "--dest-cert-dir", regCADir, "oci:"+layout+":1", fmt.Sprintf("docker://127.0.0.1:%d/test/img:1", port))
	if out, err := push.CombinedOutput(); err != nil {
		t.Fatalf("skopeo push straight to the registry: %v\n%s", err, out)
	}

	h := newHarness(t, fmt.Sprintf("  registry.test: {ports: [%d], upstream_ca: %s, connect_to: 127.0.0.1:%d, allow_private: true}\n",
		port, regCA.WritePEM(t, dir), port))
	sluiceCADir := filepath.Join(dir, "sluice-ca")
	os.MkdirAll(sluiceCADir, 0o755)
	os.WriteFile(filepath.Join(sluiceCADir, "ca.crt"), h.root.CertPEM, 0o644)
	for i := range 2 {
		pull := exec.Command(skopeo, "copy", "--src-cert-dir", sluiceCADir,
			fmt.Sprintf("docker://registry.test:%d/test/img:1", port), fmt.Sprintf("oci:%s/pull%d:1", dir, i))
		pull.Env = append(os.Environ(), "HTTPS_PROXY=http://"+h.proxyAddr, "https_proxy=http://"+h.proxyAddr, "NO_PROXY=", "no_proxy=")
		if out, err := pull.CombinedOutput(); err != nil {
			t.Fatalf("skopeo pull %d through sluice: %v\n%s", i+1, err, out)
		}
		if i == 0 {
			if stored := h.metric("sluice_blobs_downloads_total", "outcome", "stored"); stored != 2 {
				t.Errorf("first pull stored %v blobs, want 2 (config and layer)", stored)
			}
		}
	}
	if stored := h.metric("sluice_blobs_downloads_total", "outcome", "stored"); stored != 2 {
		t.Errorf("after the second pull: %v downloads, want still 2 (no upstream blob request)", stored)
	}
	if hits := h.metric("sluice_blobs_requests_total", "result", "hit"); hits < 2 {
		t.Errorf("second pull: %v blobs from disk, want 2", hits)
	}
}

// TestAptThroughSluice downloads a package with apt-get from a local
// repository over plain HTTP through sluice, twice: the second comes from
// sluice's store.
func TestAptThroughSluice(t *testing.T) {
	aptGet := testenv.RequireTool(t, "apt-get")
	dpkgDeb := testenv.RequireTool(t, "dpkg-deb")
	scan := testenv.RequireTool(t, "dpkg-scanpackages")
	dir := t.TempDir()
	repo := filepath.Join(dir, "repo")
	pkg := filepath.Join(dir, "pkg")
	os.MkdirAll(filepath.Join(pkg, "DEBIAN"), 0o755)
	os.MkdirAll(filepath.Join(pkg, "usr/share/sluice-test"), 0o755)
	os.WriteFile(filepath.Join(pkg, "usr/share/sluice-test/data"), bytes.Repeat([]byte("sluice "), 50_000), 0o644)
	os.WriteFile(filepath.Join(pkg, "DEBIAN/control"), []byte("Package: sluice-test\nVersion: 1.0\nArchitecture: all\nMaintainer: sluice <sluice@example.invalid>\nDescription: test package\n"), 0o644)
	os.MkdirAll(repo, 0o755)
	if out, err := exec.Command(dpkgDeb, "--build", pkg, filepath.Join(repo, "sluice-test_1.0_all.deb")).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v\n%s", err, out)
	}
	scanCmd := exec.Command(scan, ".", "/dev/null")
	scanCmd.Dir = repo
	packages, err := scanCmd.Output()
	if err != nil {
		t.Fatalf("dpkg-scanpackages: %v", err)
	}
	os.WriteFile(filepath.Join(repo, "Packages"), packages, 0o644)

	var mu sync.Mutex
	debGets := 0
	files := http.FileServer(http.Dir(repo))
	mirror := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, ".deb") {
			mu.Lock()
			debGets++
			mu.Unlock()
		}
		files.ServeHTTP(w, r)
	}))
	defer mirror.Close()
	h := newHarness(t, fmt.Sprintf("  repo.test: {plain_http: true, connect_to: %s, allow_private: true}\n", mirror.Listener.Addr()))

	state := filepath.Join(dir, "apt")
	for _, d := range []string{"lists/partial", "cache/archives/partial", "etc"} {
		os.MkdirAll(filepath.Join(state, d), 0o755)
	}
	os.WriteFile(filepath.Join(state, "etc/sources.list"), []byte("deb [trusted=yes allow-insecure=yes] http://repo.test/ ./\n"), 0o644)
	apt := func(args ...string) string {
		base := []string{"-q", "-o", "Dir::Etc::SourceList=" + filepath.Join(state, "etc/sources.list"), "-o", "Dir::Etc::SourceParts=/nonexistent",
			"-o", "Dir::State::Lists=" + filepath.Join(state, "lists"), "-o", "Dir::Cache=" + filepath.Join(state, "cache"),
			"-o", "Dir::State::status=/dev/null", "-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root",
			"-o", "Acquire::http::Proxy=http://" + h.proxyAddr, "-o", "Acquire::AllowInsecureRepositories=1"}
		cmd := exec.Command(aptGet, append(base, args...)...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("apt-get %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	apt("update")
	for i := range 2 {
		os.Remove(filepath.Join(dir, "sluice-test_1.0_all.deb"))
		apt("download", "sluice-test")
		got, err := os.ReadFile(filepath.Join(dir, "sluice-test_1.0_all.deb"))
		want, _ := os.ReadFile(filepath.Join(repo, "sluice-test_1.0_all.deb"))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("download %d: %d bytes (err %v), want the repository's %d", i+1, len(got), err, len(want))
		}
	}
	if debGets != 1 {
		t.Errorf("the mirror served the .deb %d times for two downloads, want 1", debGets)
	}
}

func writePair(t *testing.T, dir string, der []byte, key any) {
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(filepath.Join(dir, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600)
}

// writeOCILayout writes a one-layer image in OCI layout, tagged "1".
func writeOCILayout(t *testing.T, dir string) string {
	blobs := filepath.Join(dir, "blobs", "sha256")
	os.MkdirAll(blobs, 0o755)
	put := func(b []byte) (string, int) {
		sum := sha256.Sum256(b)
		d := hex.EncodeToString(sum[:])
		os.WriteFile(filepath.Join(blobs, d), b, 0o644)
		return "sha256:" + d, len(b)
	}
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	content := bytes.Repeat([]byte("layer data "), 100_000)
	tw.WriteHeader(&tar.Header{Name: "data.txt", Mode: 0o644, Size: int64(len(content))})
	tw.Write(content)
	tw.Close()
	diffSum := sha256.Sum256(layer.Bytes())
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(layer.Bytes())
	zw.Close()
	layerDigest, layerSize := put(gz.Bytes())
	config, _ := json.Marshal(map[string]any{"architecture": "amd64", "os": "linux", "config": map[string]any{},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + hex.EncodeToString(diffSum[:])}}})
	configDigest, configSize := put(config)
	manifest, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": configDigest, "size": configSize},
		"layers": []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layerDigest, "size": layerSize}}})
	manifestDigest, manifestSize := put(manifest)
	index, _ := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []any{map[string]any{
		"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifestDigest, "size": manifestSize,
		"annotations": map[string]string{"org.opencontainers.image.ref.name": "1"}}}})
	os.WriteFile(filepath.Join(dir, "index.json"), index, 0o644)
	os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
	return dir
}
