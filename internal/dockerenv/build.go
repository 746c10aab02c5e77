package dockerenv

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/moby/moby/client"
)

// HashLabel is the image label that holds the hash of the build context
// (binary and Dockerfile) an image was built from. BuildGoImage skips the
// build when the tagged image already carries the hash it would produce.
const HashLabel = "dev.pullthrough.build-sha256"

// BuildOptions describes an image made of one static Go binary.
type BuildOptions struct {
	// Package is what `go build` builds: a path relative to Dir
	// ("./fixtures/internal/standin/cmd/standin") or an import path. It must
	// be a main package.
	Package string
	// Dir is the directory `go build` runs in, inside the module that holds
	// Package. Empty means the current directory.
	Dir string
	// Tag names the image, for example "pullthrough.local/hello:test". Use a
	// name of this project's, never a real registry's, so a test image can
	// never shadow a real one on a developer's machine.
	Tag string
	// Binary is the file name of the binary in the image, at the root of its
	// file system; it is also the entrypoint. Empty means the last element
	// of Package.
	Binary string
	// Env is set in the image (Dockerfile ENV), not in `go build`'s
	// environment.
	Env map[string]string
	// Labels are set on the image, next to HashLabel.
	Labels map[string]string
}

// BuildGoImage builds opts.Package with CGO_ENABLED=0 for linux and packs the
// binary into an image FROM scratch, made with go-containerregistry and
// loaded into the daemon (docker load), so no base image is pulled and no
// builder is involved. Build output goes to log,
// which may be nil. An image under opts.Tag that already carries the same
// HashLabel is kept as it is, which makes repeated test runs cheap.
func BuildGoImage(ctx context.Context, cli *client.Client, opts BuildOptions, log io.Writer) error {
	if log == nil {
		log = io.Discard
	}
	if opts.Tag == "" {
		return errors.New("building image: BuildOptions.Tag is empty")
	}
	if opts.Package == "" {
		return fmt.Errorf("building image %q: BuildOptions.Package is empty", opts.Tag)
	}
	binary := opts.Binary
	if binary == "" {
		binary = path.Base(filepath.ToSlash(opts.Package))
	}
	if binary == "" || binary == "." || binary == "/" || strings.ContainsAny(binary, `/\`) {
		return fmt.Errorf("building image %q: binary name %q is not a plain file name", opts.Tag, binary)
	}

	goarch, err := daemonArch(ctx, cli)
	if err != nil {
		return fmt.Errorf("building image %q: %w", opts.Tag, err)
	}

	tmp, err := os.MkdirTemp("", "dockerenv-build-")
	if err != nil {
		return fmt.Errorf("building image %q: %w", opts.Tag, err)
	}
	defer os.RemoveAll(tmp)

	binPath := filepath.Join(tmp, binary)
	fmt.Fprintf(log, "go build %s for linux/%s\n", opts.Package, goarch)
	if err := goBuild(ctx, opts.Dir, opts.Package, goarch, binPath, log); err != nil {
		return fmt.Errorf("building image %q: %w", opts.Tag, err)
	}
	bin, err := os.ReadFile(binPath)
	if err != nil {
		return fmt.Errorf("building image %q: %w", opts.Tag, err)
	}
	return buildImage(ctx, cli, binary, bin, opts, log)
}

// GoBinary builds pkg (in dir's module) with CGO_ENABLED=0 for linux on the
// daemon's architecture and returns the binary.
func GoBinary(ctx context.Context, cli *client.Client, dir, pkg string, log io.Writer) ([]byte, error) {
	if log == nil {
		log = io.Discard
	}
	goarch, err := daemonArch(ctx, cli)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "dockerenv-build-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, "bin")
	fmt.Fprintf(log, "go build %s for linux/%s\n", pkg, goarch)
	if err := goBuild(ctx, dir, pkg, goarch, out, log); err != nil {
		return nil, err
	}
	return os.ReadFile(out)
}

// BuildBinaryImage packs a static linux binary that already exists (bin)
// into an image FROM scratch, as BuildGoImage does after its go build.
func BuildBinaryImage(ctx context.Context, cli *client.Client, bin []byte, opts BuildOptions, log io.Writer) error {
	if log == nil {
		log = io.Discard
	}
	if opts.Tag == "" || opts.Binary == "" || strings.ContainsAny(opts.Binary, `/\`) {
		return fmt.Errorf("building image %q: want a Tag and a plain Binary file name", opts.Tag)
	}
	return buildImage(ctx, cli, opts.Binary, bin, opts, log)
}

func buildImage(ctx context.Context, cli *client.Client, binary string, bin []byte, opts BuildOptions, log io.Writer) error {
	dockerfile, err := renderDockerfile(binary, opts.Env)
	if err != nil {
		return fmt.Errorf("building image %q: %w", opts.Tag, err)
	}
	labels := maps.Clone(opts.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels[HashLabel] = contextHash(bin, dockerfile, opts.Labels)

	oldID, upToDate, err := existingImage(ctx, cli, opts.Tag, labels[HashLabel])
	if err != nil {
		return fmt.Errorf("building image %q: %w", opts.Tag, err)
	}
	if upToDate {
		fmt.Fprintf(log, "image %s is up to date\n", opts.Tag)
		return nil
	}

	goarch, err := daemonArch(ctx, cli)
	if err != nil {
		return fmt.Errorf("building image %q: %w", opts.Tag, err)
	}
	img, err := scratchImage(binary, bin, goarch, opts.Env, labels)
	if err != nil {
		return fmt.Errorf("building image %q: %w", opts.Tag, err)
	}
	if err := loadImage(ctx, cli, opts.Tag, img, log); err != nil {
		return fmt.Errorf("building image %q: %w", opts.Tag, err)
	}

	// The previous build under this tag is now untagged; drop it so repeated
	// edits do not pile up dangling images. It may still be used by a
	// container, in which case the daemon refuses and that is fine.
	if oldID != "" {
		if cur, err := cli.ImageInspect(ctx, opts.Tag); err == nil && cur.ID != oldID {
			_, _ = cli.ImageRemove(ctx, oldID, client.ImageRemoveOptions{PruneChildren: true})
		}
	}
	return nil
}

// daemonArch asks the daemon for its architecture, so the binary runs in the
// daemon's containers even when DOCKER_HOST points at another machine.
func daemonArch(ctx context.Context, cli *client.Client) (string, error) {
	info, err := cli.Info(ctx, client.InfoOptions{})
	if err != nil {
		return "", fmt.Errorf("asking the daemon for its architecture: %w", err)
	}
	switch arch := info.Info.Architecture; arch {
	case "x86_64", "amd64":
		return "amd64", nil
	case "aarch64", "arm64":
		return "arm64", nil
	case "armv7l", "armhf":
		return "arm", nil
	case "s390x", "ppc64le", "riscv64":
		return arch, nil
	default:
		return "", fmt.Errorf("daemon architecture %q has no Go equivalent here", arch)
	}
}

func goBuild(ctx context.Context, dir, pkg, goarch, out string, log io.Writer) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch)
	var stderr bytes.Buffer
	cmd.Stdout = log
	cmd.Stderr = io.MultiWriter(&stderr, log)
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("running go build %s: %w: %s", pkg, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// renderDockerfile writes ENV values quoted, with $ escaped, so a value is
// taken literally and never expanded by the builder.
func renderDockerfile(binary string, env map[string]string) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("FROM scratch\n")
	fmt.Fprintf(&b, "COPY %s /%s\n", binary, binary)
	for _, k := range slices.Sorted(maps.Keys(env)) {
		v := env[k]
		if k == "" || strings.ContainsAny(k, "= \t\r\n\"'$\\") {
			return nil, fmt.Errorf("rendering Dockerfile: environment variable name %q is not usable", k)
		}
		if strings.ContainsAny(v, "\r\n") {
			return nil, fmt.Errorf("rendering Dockerfile: value of %s spans lines", k)
		}
		q := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `$`, `\$`).Replace(v)
		fmt.Fprintf(&b, "ENV %s=\"%s\"\n", k, q)
	}
	entry, err := json.Marshal([]string{"/" + binary})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(&b, "ENTRYPOINT %s\n", entry)
	return b.Bytes(), nil
}

// contextHash covers everything that ends up in the image, so a change to
// the binary, the environment or the labels triggers a rebuild.
func contextHash(bin, dockerfile []byte, labels map[string]string) string {
	h := sha256.New()
	h.Write(bin)
	h.Write([]byte{0})
	h.Write(dockerfile)
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		fmt.Fprintf(h, "\x00%s=%s", k, labels[k])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// existingImage reports the ID of the image under tag, if any, and whether it
// was built from the context with this hash.
func existingImage(ctx context.Context, cli *client.Client, tag, hash string) (id string, upToDate bool, err error) {
	res, err := cli.ImageInspect(ctx, tag)
	if cerrdefs.IsNotFound(err) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("inspecting existing image: %w", err)
	}
	var labels map[string]string
	if res.Config != nil {
		labels = res.Config.Labels
	}
	return res.ID, labels[HashLabel] == hash, nil
}

// buildMessage is one line of the build endpoint's JSON stream. Daemons
// before API 1.4x send the failure in "error" as well as "errorDetail";
// both are read so either kind of daemon reports it.
type buildMessage struct {
	Stream      string `json:"stream"`
	Status      string `json:"status"`
	Error       string `json:"error"`
	ErrorDetail *struct {
		Message string `json:"message"`
	} `json:"errorDetail"`
}

// drainBuildStream reads the stream to its end, because the build is not
// finished (and the tag not set) until the daemon closes it, and returns
// the first error the stream reports.
func drainBuildStream(body io.Reader, log io.Writer) error {
	dec := json.NewDecoder(body)
	for {
		var m buildMessage
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("reading build output: %w", err)
		}
		switch {
		case m.ErrorDetail != nil && m.ErrorDetail.Message != "":
			return fmt.Errorf("daemon reported: %s", m.ErrorDetail.Message)
		case m.Error != "":
			return fmt.Errorf("daemon reported: %s", m.Error)
		case m.Stream != "":
			io.WriteString(log, m.Stream)
		case m.Status != "":
			fmt.Fprintln(log, m.Status)
		}
	}
}

// scratchImage is one layer holding the binary at the root, with the
// entrypoint, environment and labels a Dockerfile would set.
func scratchImage(binary string, bin []byte, goarch string, env, labels map[string]string) (v1.Image, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: binary, Mode: 0o755, Size: int64(len(bin)), Typeflag: tar.TypeReg}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(bin); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	})
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", goarch
	cf.Config.Entrypoint = []string{"/" + binary}
	for _, k := range slices.Sorted(maps.Keys(env)) {
		cf.Config.Env = append(cf.Config.Env, k+"="+env[k])
	}
	cf.Config.Labels = labels
	return mutate.ConfigFile(img, cf)
}

// loadImage sends the image to the daemon as `docker load` does.
func loadImage(ctx context.Context, cli *client.Client, tag string, img v1.Image, log io.Writer) error {
	ref, err := name.NewTag(tag)
	if err != nil {
		return fmt.Errorf("tag %q: %w", tag, err)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(tarball.Write(ref, img, pw)) }()
	res, err := cli.ImageLoad(ctx, pr, client.ImageLoadWithQuiet(true))
	if err != nil {
		pr.CloseWithError(err)
		return fmt.Errorf("loading into the daemon: %w", err)
	}
	defer res.Close()
	if err := drainBuildStream(res, log); err != nil {
		return err
	}
	fmt.Fprintf(log, "loaded %s\n", tag)
	return nil
}

// BuildToolImage builds one of this module's small programs (pkg) into an
// image FROM scratch tagged repository:<hash of the binary>, so that two
// checkouts building different versions on one daemon never share a tag,
// and returns the tag.
func BuildToolImage(ctx context.Context, cli *client.Client, pkg, repository, binary string, log io.Writer) (string, error) {
	bin, err := GoBinary(ctx, cli, "", pkg, log)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(bin)
	tag := repository + ":" + hex.EncodeToString(sum[:6])
	if err := BuildBinaryImage(ctx, cli, bin, BuildOptions{Tag: tag, Binary: binary}, log); err != nil {
		return "", err
	}
	return tag, nil
}
