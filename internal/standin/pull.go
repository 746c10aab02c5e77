package standin

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrDigestMismatch means a manifest or blob did not hash to the digest it
// was asked for: the endpoint served corrupt or wrong content.
var ErrDigestMismatch = errors.New("digest mismatch")

// manifestAccept is what containerd's resolver sends, so a cache sees the
// same content negotiation from the stand-in as from a real node.
const manifestAccept = "application/vnd.docker.distribution.manifest.v2+json, " +
	"application/vnd.docker.distribution.manifest.list.v2+json, " +
	"application/vnd.oci.image.manifest.v1+json, " +
	"application/vnd.oci.image.index.v1+json, */*"

// maxManifest is containerd's limit too: a manifest is small, and a body
// without end must not fill memory.
const maxManifest = 4 << 20

const (
	mtOCIIndex    = "application/vnd.oci.image.index.v1+json"
	mtDockerList  = "application/vnd.docker.distribution.manifest.list.v2+json"
	userAgentName = "pullthrough-talos-standin (containerd-like)"
)

// tally counts what one image's pull sent and received. Blob bodies are
// counted as they arrive, so a cut body still counts the bytes it brought.
type tally struct {
	mu       sync.Mutex
	requests int64
	bytes    int64
	blobs    int
}

func (t *tally) add(requests, bytes int64) {
	t.mu.Lock()
	t.requests += requests
	t.bytes += bytes
	t.mu.Unlock()
}

// fetcher speaks the registry API to one endpoint for one image.
type fetcher struct {
	client *http.Client
	idle   time.Duration // a body that sends nothing this long is abandoned
	base   *url.URL      // ".../v2"
	token  string        // bearer token from the registry's token dance, once done
	ns     string        // ?ns= value; empty when talking to the registry itself
	t      *tally
}

type descriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	Platform  *struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
		Variant      string `json:"variant"`
	} `json:"platform"`
}

type manifest struct {
	MediaType string       `json:"mediaType"`
	Config    *descriptor  `json:"config"`
	Layers    []descriptor `json:"layers"`
	Manifests []descriptor `json:"manifests"`
}

// pull fetches img's manifest (through an index when the tag names one),
// config and layers from hosts, each step from the first host that
// serves it, as containerd does, and returns the digest the tag resolved
// to and the host that resolved it.
func (h *hosts) pull(ctx context.Context, img Image) (string, string, error) {
	var tagDigest string
	var body []byte
	served, err := h.each(ctx, "resolve "+img.Tag, func(f *fetcher) (err error) {
		tagDigest, body, err = f.resolve(ctx, img)
		return err
	})
	if err != nil {
		return "", "", err
	}
	if body == nil {
		if body, err = h.manifest(ctx, img, tagDigest); err != nil {
			return "", "", err
		}
	}
	var m manifest
	if err := json.Unmarshal(body, &m); err != nil {
		return "", "", fmt.Errorf("parsing manifest %s: %w", tagDigest, err)
	}
	if m.MediaType == mtOCIIndex || m.MediaType == mtDockerList || (m.Config == nil && len(m.Manifests) > 0) {
		d, err := pickPlatform(m, h.arch)
		if err != nil {
			return "", "", fmt.Errorf("reading index %s: %w", tagDigest, err)
		}
		if body, err = h.manifest(ctx, img, d); err != nil {
			return "", "", err
		}
		m = manifest{}
		if err := json.Unmarshal(body, &m); err != nil {
			return "", "", fmt.Errorf("parsing manifest %s: %w", d, err)
		}
	}
	if m.Config == nil {
		return "", "", fmt.Errorf("reading manifest of %s: it has no config descriptor", img.Ref)
	}
	for _, d := range append([]descriptor{*m.Config}, m.Layers...) {
		if _, err := h.each(ctx, "blob "+d.Digest, func(f *fetcher) error { return f.blob(ctx, img, d) }); err != nil {
			return "", "", err
		}
		h.t.mu.Lock()
		h.t.blobs++
		h.t.mu.Unlock()
	}
	return tagDigest, served, nil
}

func (h *hosts) manifest(ctx context.Context, img Image, digest string) (body []byte, err error) {
	_, err = h.each(ctx, "manifest "+digest, func(f *fetcher) (err error) {
		body, err = f.manifest(ctx, img, digest)
		return err
	})
	return body, err
}

// resolve asks for the tag's digest with HEAD, as containerd does. A
// response without Docker-Content-Digest makes it GET the tag instead and
// hash the body; that body is returned so it is not fetched twice.
func (f *fetcher) resolve(ctx context.Context, img Image) (string, []byte, error) {
	u := f.url(img.Repository, "manifests", img.Tag)
	resp, err := f.do(ctx, http.MethodHead, u, manifestAccept)
	if err != nil {
		return "", nil, err
	}
	resp.Body.Close()
	if d := resp.Header.Get("Docker-Content-Digest"); d != "" && resp.ContentLength >= 0 {
		if _, err := sha256Hex(d); err != nil {
			return "", nil, fmt.Errorf("HEAD %s: Docker-Content-Digest %q: %w", u, d, err)
		}
		return d, nil, nil
	}
	resp, err = f.do(ctx, http.MethodGet, u, manifestAccept)
	if err != nil {
		return "", nil, err
	}
	defer resp.Body.Close()
	body, err := readLimited(resp.Body, maxManifest)
	if err != nil {
		return "", nil, fmt.Errorf("GET %s: %w", u, err)
	}
	sum := sha256.Sum256(body)
	return "sha256:" + hex.EncodeToString(sum[:]), body, nil
}

// manifest GETs a manifest by digest and checks that it hashes to it.
func (f *fetcher) manifest(ctx context.Context, img Image, digest string) ([]byte, error) {
	want, err := sha256Hex(digest)
	if err != nil {
		return nil, fmt.Errorf("fetching manifest %q of %s: %w", digest, img.Ref, err)
	}
	u := f.url(img.Repository, "manifests", digest)
	resp, err := f.do(ctx, http.MethodGet, u, manifestAccept)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := readLimited(resp.Body, maxManifest)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	if got := sha256.Sum256(body); hex.EncodeToString(got[:]) != want {
		return nil, fmt.Errorf("GET %s: %w: body hashes to sha256:%x", u, ErrDigestMismatch, got)
	}
	return body, nil
}

// blob streams a blob, hashing and counting it on the way, and checks both
// digest and size against the descriptor.
func (f *fetcher) blob(ctx context.Context, img Image, d descriptor) error {
	want, err := sha256Hex(d.Digest)
	if err != nil {
		return fmt.Errorf("fetching blob %q of %s: %w", d.Digest, img.Ref, err)
	}
	u := f.url(img.Repository, "blobs", d.Digest)
	resp, err := f.do(ctx, http.MethodGet, u, "*/*")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	h := sha256.New()
	// One byte past the size is enough to tell an overlong body.
	n, err := io.Copy(h, io.LimitReader(resp.Body, d.Size+1))
	if err != nil {
		return fmt.Errorf("GET %s: reading body after %d of %d bytes: %w", u, n, d.Size, err)
	}
	if n != d.Size {
		return fmt.Errorf("GET %s: %w: got %d bytes, the manifest says %d", u, ErrDigestMismatch, n, d.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("GET %s: %w: body hashes to sha256:%s", u, ErrDigestMismatch, got)
	}
	return nil
}

func pickPlatform(m manifest, arch string) (string, error) {
	var seen []string
	for _, d := range m.Manifests {
		if d.Platform == nil {
			continue
		}
		if d.Platform.OS == "linux" && d.Platform.Architecture == arch {
			return d.Digest, nil
		}
		seen = append(seen, d.Platform.OS+"/"+d.Platform.Architecture)
	}
	return "", fmt.Errorf("no manifest for linux/%s among %v", arch, seen)
}

func (f *fetcher) url(repo, kind, ref string) string {
	u := *f.base
	u.Path = u.Path + "/" + repo + "/" + kind + "/" + ref
	if f.ns != "" {
		u.RawQuery = url.Values{"ns": {f.ns}}.Encode()
	}
	return u.String()
}

// do sends one request and returns a 2xx response whose body counts bytes
// into the tally and gives up when it stalls longer than f.idle. Any other
// status is an error carrying the start of the registry's error body.
func (f *fetcher) do(ctx context.Context, method, u, accept string) (*http.Response, error) {
	rctx, cancel := context.WithCancelCause(ctx)
	req, err := http.NewRequestWithContext(rctx, method, u, nil)
	if err != nil {
		cancel(nil)
		return nil, fmt.Errorf("%s %s: %w", method, u, err)
	}
	req.Header.Set("Accept", accept)
	req.Header.Set("User-Agent", userAgentName)
	if f.token != "" {
		req.Header.Set("Authorization", "Bearer "+f.token)
	}
	f.t.add(1, 0)
	resp, err := f.client.Do(req)
	if err != nil {
		cancel(nil)
		return nil, fmt.Errorf("%s %s: %w", method, u, err)
	}
	if resp.StatusCode == http.StatusUnauthorized && f.token == "" {
		// The anonymous token dance of a registry's own API (a mirror
		// needs none), then the request once more.
		challenge := resp.Header.Get("Www-Authenticate")
		f.t.add(0, drainCount(resp.Body))
		cancel(nil)
		if err := f.fetchToken(ctx, challenge); err != nil {
			return nil, fmt.Errorf("%s %s: 401 Unauthorized: %w", method, u, err)
		}
		return f.do(ctx, method, u, accept)
	}
	body := &watchedBody{rc: resp.Body, t: f.t, cancel: cancel, idle: f.idle}
	body.timer = time.AfterFunc(f.idle, func() {
		body.stalled.Store(true)
		cancel(nil)
	})
	resp.Body = body
	if resp.StatusCode/100 != 2 {
		msg, _ := readLimited(resp.Body, 512)
		resp.Body.Close()
		return nil, &statusError{code: resp.StatusCode,
			msg: fmt.Sprintf("%s %s: %s: %s", method, u, resp.Status, strings.TrimSpace(string(msg)))}
	}
	return resp, nil
}

// statusError is an answer that was not a success; its status decides
// whether the same host is tried again.
type statusError struct {
	code int
	msg  string
}

func (e *statusError) Error() string { return e.msg }

// watchedBody counts what it reads and re-arms the stall timer on each read.
// When the timer fires it cancels the request, which ends a Read blocked on
// a silent connection; the error then says why.
type watchedBody struct {
	rc      io.ReadCloser
	t       *tally
	timer   *time.Timer
	cancel  context.CancelCauseFunc
	idle    time.Duration
	stalled atomic.Bool
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		b.t.add(0, int64(n))
		b.timer.Reset(b.idle)
	}
	if err != nil && err != io.EOF && b.stalled.Load() {
		err = fmt.Errorf("body stalled: no data for %s: %w", b.idle, err)
	}
	return n, err
}

func (b *watchedBody) Close() error {
	b.timer.Stop()
	err := b.rc.Close()
	b.cancel(nil)
	return err
}

func readLimited(r io.Reader, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return b, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("body is larger than %d bytes", limit)
	}
	return b, nil
}

func sha256Hex(digest string) (string, error) {
	hexPart, ok := strings.CutPrefix(digest, "sha256:")
	if !ok || len(hexPart) != 64 {
		return "", fmt.Errorf("digest %q: want sha256:<64 hex digits>", digest)
	}
	if _, err := hex.DecodeString(hexPart); err != nil {
		return "", fmt.Errorf("digest %q: %w", digest, err)
	}
	return hexPart, nil
}
