package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"sluice/internal/route"
	"sluice/internal/testenv"

	"go.yaml.in/yaml/v3"
)

// TestSystemdUnit: deploy/sluice.service passes systemd-analyze verify,
// with its binary path pointed at a binary that exists (this test's).
func TestSystemdUnit(t *testing.T) {
	analyze := testenv.RequireTool(t, "systemd-analyze", "systemd")
	unit, err := os.ReadFile(filepath.Join("..", "..", "deploy", "sluice.service"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(unit), "ExecStart=/usr/local/bin/sluice ") {
		t.Fatal("deploy/sluice.service does not start /usr/local/bin/sluice")
	}
	bin, err := filepath.Abs(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "sluice.service")
	os.WriteFile(path, []byte(strings.ReplaceAll(string(unit), "/usr/local/bin/sluice", bin)), 0o644)
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestDeployConfigs: deploy/sluice.yaml is a config sluice accepts, with
// the embedded default's hosts exactly (the file repeats them); the
// compose file parses, keeps the bots on an internal network whose DNS and
// proxy are sluice's address, and gives them the CA bundle, never the
// data dir with the CA key.
func TestDeployConfigs(t *testing.T) {
	deployed := readYAML(t, filepath.Join("..", "..", "deploy", "sluice.yaml"))
	embedded := readYAML(t, filepath.Join("..", "..", "internal", "config", "default.yaml"))
	if !reflect.DeepEqual(deployed["hosts"], embedded["hosts"]) {
		t.Errorf("deploy/sluice.yaml's hosts differ from the embedded default's:\n%v\n%v", deployed["hosts"], embedded["hosts"])
	}
	data, _ := os.ReadFile(filepath.Join("..", "..", "deploy", "sluice.yaml"))
	if _, err := route.Parse(data, "deploy/sluice.yaml", t.TempDir(), nil); err != nil {
		t.Errorf("sluice refuses deploy/sluice.yaml: %v", err)
	}

	var compose struct {
		Services map[string]struct {
			Networks    any               `yaml:"networks"`
			DNS         []string          `yaml:"dns"`
			Environment map[string]string `yaml:"environment"`
			Volumes     []string          `yaml:"volumes"`
		} `yaml:"services"`
		Networks map[string]struct {
			Internal bool `yaml:"internal"`
		} `yaml:"networks"`
	}
	composeFile := filepath.Join("..", "..", "deploy", "compose.yaml")
	raw, _ := os.ReadFile(composeFile)
	if err := yaml.Unmarshal(raw, &compose); err != nil {
		t.Fatal(err)
	}
	if !compose.Networks["bots"].Internal {
		t.Error("the bots' network is not internal: true")
	}
	bot := compose.Services["bot"]
	if len(bot.DNS) != 1 || bot.DNS[0] != "172.30.0.2" || bot.Environment["HTTPS_PROXY"] != "http://172.30.0.2:3128" {
		t.Errorf("the bot's DNS %v and proxy %q are not sluice's 172.30.0.2", bot.DNS, bot.Environment["HTTPS_PROXY"])
	}
	for _, v := range bot.Volumes {
		if strings.HasPrefix(v, "sluice-data") {
			t.Errorf("the bot mounts sluice's data dir (%s), which holds the CA key", v)
		}
	}
	if fmt.Sprint(compose.Services["bot"].Networks) != "[bots]" {
		t.Errorf("the bot is on %v, want only the internal network", bot.Networks)
	}
	dc := testenv.RequireTool(t, "docker-compose")
	if out, err := exec.Command(dc, "-f", composeFile, "config", "-q").CombinedOutput(); err != nil {
		t.Errorf("docker-compose config: %v\n%s", err, out)
	}
}

func readYAML(t *testing.T, path string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(data, &m); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return m
}

// TestContainerImage builds deploy/Containerfile with buildah (a scratch
// image needs no registry) and runs the binary it holds from the image's
// file system, since containers cannot run here: it is static, and the
// image's config and roots are where sluice looks for them.
func TestContainerImage(t *testing.T) {
	testenv.RequireRoot(t, "building an image with buildah")
	buildah := testenv.RequireTool(t, "buildah")
	ctx := t.TempDir()
	build := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(ctx, "sluice"), ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("static build: %v\n%s", err, out)
	}
	os.Mkdir(filepath.Join(ctx, "data"), 0o755)
	os.Mkdir(filepath.Join(ctx, "ca"), 0o755)
	for src, dst := range map[string]string{"/etc/ssl/certs/ca-certificates.crt": "ca-certificates.crt", filepath.Join("..", "..", "deploy", "sluice.yaml"): "sluice.yaml"} {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(ctx, dst), data, 0o644)
	}
	tag := fmt.Sprintf("localhost/sluice-test:%d", os.Getpid())
	if out, err := exec.Command(buildah, "build", "--format", "docker", "-f", filepath.Join("..", "..", "deploy", "Containerfile"), "-t", tag, ctx).CombinedOutput(); err != nil {
		t.Fatalf("buildah build: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command(buildah, "rmi", "-f", tag).Run() })
	out, err := exec.Command(buildah, "inspect", "--type", "image", "--format", "{{.Docker.Config.User}} {{.Docker.Config.Volumes}} {{.Docker.Config.Entrypoint}}", tag).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "65532:65532 map[/ca:{} /data:{}] [/sluice]" {
		t.Errorf("image config: %v %q, want user 65532:65532, volumes /ca and /data, entrypoint /sluice", err, out)
	}
	ctr, err := exec.Command(buildah, "from", tag).Output()
	if err != nil {
		t.Fatal(err)
	}
	name := strings.TrimSpace(string(ctr))
	t.Cleanup(func() { exec.Command(buildah, "rm", name).Run() })
	mnt, err := exec.Command(buildah, "mount", name).Output()
	if err != nil {
		t.Fatal(err)
	}
	root := strings.TrimSpace(string(mnt))
	if out, err := exec.Command(filepath.Join(root, "sluice"), "version").CombinedOutput(); err != nil || !strings.HasPrefix(string(out), "sluice ") {
		t.Errorf("the image's /sluice version: %v %s", err, out)
	}
	// Every volume the compose file mounts into the image's containers is
	// a directory the image ships, owned by its user, so that a new volume
	// is writable.
	compose := readYAML(t, filepath.Join("..", "..", "deploy", "compose.yaml"))
	for name, svc := range compose["services"].(map[string]any) {
		s := svc.(map[string]any)
		if s["image"] != "localhost/sluice:latest" {
			continue
		}
		for _, v := range s["volumes"].([]any) {
			src, dst, _ := strings.Cut(v.(string), ":")
			if strings.HasPrefix(src, ".") || strings.HasPrefix(src, "/") {
				continue // a bind mount of the host's
			}
			dst, _, _ = strings.Cut(dst, ":")
			if fi, err := os.Stat(filepath.Join(root, dst)); err != nil || !fi.IsDir() || fi.Sys().(*syscall.Stat_t).Uid != 65532 {
				t.Errorf("service %s mounts volume %s at %s; the image's %s: %v, want a directory owned by 65532", name, src, dst, dst, err)
			}
		}
	}
	for _, f := range []string{"etc/ssl/certs/ca-certificates.crt", "etc/sluice/sluice.yaml"} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("the image lacks /%s: %v", f, err)
		}
	}
}
