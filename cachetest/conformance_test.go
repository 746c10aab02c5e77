package cachetest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/cachetest"
)

// conformanceModule is the OCI distribution-spec conformance suite, built
// from the Go module proxy (see FACTS.md).
const conformanceModule = "github.com/opencontainers/distribution-spec/conformance@v0.0.0-20260831232431-97274622c111"

func conformanceBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("the conformance suite is built from the module proxy; skipped under -short")
	}
	bin := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "install", conformanceModule)
	cmd.Env = append(os.Environ(), "GOBIN="+bin, "GOFLAGS=-mod=mod", "GOWORK=off")
	cmd.Dir = bin
	if out, err := cmd.CombinedOutput(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("building the OCI conformance suite: %v\n%s", err, out)
		}
		t.Skipf("building the OCI conformance suite (needs the Go module proxy): %v\n%s", err, out)
	}
	return filepath.Join(bin, "conformance")
}

var (
	passRE   = regexp.MustCompile(`(?m)^\s*Pass\S*:\s*(\d+)`)
	failRE   = regexp.MustCompile(`(?m)^\s*FAIL\S*:\s*(\d+)`)
	failedRE = regexp.MustCompile(`msg="failed test" name="([^"]+)"`)
)

type conformanceResult struct {
	passed, failed int
	failures       map[string]bool
	output         string
}

// runConformance runs the suite against registry (host:port) with env.
func runConformance(t *testing.T, bin, registry string, env ...string) conformanceResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(),
		"OCI_REGISTRY="+registry,
		"OCI_TLS=disabled",
		"OCI_RESULTS_DIR="+dir,
		"OCI_API_BLOBS_DELETE=false",
		"OCI_API_MANIFESTS_DELETE=false",
		"OCI_API_TAGS_DELETE=false",
		"OCI_HIDE_SKIPPED_WORKFLOWS=1",
	), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	_ = cmd.Run() // it exits non-zero when a test fails; the summary says which
	res := conformanceResult{failures: map[string]bool{}, output: out.String()}
	if m := passRE.FindStringSubmatch(res.output); m != nil {
		fmt.Sscan(m[1], &res.passed)
	}
	if m := failRE.FindStringSubmatch(res.output); m != nil {
		fmt.Sscan(m[1], &res.failed)
	}
	for _, m := range failedRE.FindAllStringSubmatch(res.output, -1) {
		res.failures[strings.TrimSpace(m[1])] = true
	}
	return res
}

// seeded lists what a registry holds in repo: tags, manifest digests
// (children of indexes included) and blob digests.
func seeded(t *testing.T, host, repo string) (tags, manifests, blobs []string) {
	t.Helper()
	r, err := name.NewRepository(host+"/"+repo, name.Insecure)
	require.NoError(t, err)
	all, err := remote.List(r)
	require.NoError(t, err)
	for _, tag := range all {
		// go-containerregistry's registry lists manifests pushed by
		// digest among its tags.
		if !strings.Contains(tag, ":") {
			tags = append(tags, tag)
		}
	}
	seenM, seenB := map[string]bool{}, map[string]bool{}
	var walk func(ref string)
	walk = func(ref string) {
		nref, err := name.ParseReference(host+"/"+repo+ref, name.Insecure)
		require.NoError(t, err)
		desc, err := remote.Get(nref)
		if err != nil {
			return // a sparse index names manifests that were never pushed
		}
		if seenM[desc.Digest.String()] {
			return
		}
		seenM[desc.Digest.String()] = true
		manifests = append(manifests, desc.Digest.String())
		var m struct {
			Config    *struct{ Digest string }  `json:"config"`
			Layers    []struct{ Digest string } `json:"layers"`
			Blobs     []struct{ Digest string } `json:"blobs"`
			Manifests []struct{ Digest string } `json:"manifests"`
		}
		if json.Unmarshal(desc.Manifest, &m) != nil {
			return
		}
		if m.Config != nil {
			m.Layers = append(m.Layers, *m.Config)
		}
		for _, b := range append(m.Layers, m.Blobs...) {
			if !seenB[b.Digest] {
				// Only blobs the registry holds: sparse manifests name others.
				bref, err := name.NewDigest(host+"/"+repo+"@"+b.Digest, name.Insecure)
				if err != nil {
					continue
				}
				if _, err := remote.Layer(bref); err == nil {
					seenB[b.Digest] = true
					blobs = append(blobs, b.Digest)
				}
			}
		}
		for _, c := range m.Manifests {
			walk("@" + c.Digest)
		}
	}
	for _, tag := range tags {
		walk(":" + tag)
	}
	return tags, manifests, blobs
}

// The suite's read-only pull run through a cache passes everything it
// passes against the upstream itself (go-containerregistry's registry, with
// referrers).
func TestOCIConformancePullThroughTheCachePassesWhatTheUpstreamPasses(t *testing.T) {
	bin := conformanceBinary(t)
	up := httptest.NewServer(registry.New(registry.WithReferrersSupport(true), registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(up.Close)
	host := strings.TrimPrefix(up.URL, "http://")
	const repo = "conformance/repo1"

	// A full run against the writable upstream (deletes off) seeds it with
	// every kind of content the suite knows.
	seed := runConformance(t, bin, host, "OCI_REPO1="+repo, "OCI_REPO2=conformance/repo2")
	require.Positive(t, seed.passed, "the seeding run ran no test:\n%s", seed.output)
	tags, manifests, blobs := seeded(t, host, repo)
	require.NotEmpty(t, tags)
	ro := []string{"OCI_REPO1=" + repo, "OCI_API_PUSH=false",
		"OCI_RO_DATA_TAGS=" + strings.Join(tags, " "),
		"OCI_RO_DATA_MANIFESTS=" + strings.Join(manifests, " "),
		"OCI_RO_DATA_BLOBS=" + strings.Join(blobs, " "),
		"OCI_RO_DATA_REFERRERS=" + strings.Join(manifests, " ")}

	direct := runConformance(t, bin, host, ro...)
	require.Positive(t, direct.passed, "the read-only run ran no test against the upstream:\n%s", direct.output)
	set := cachetest.New(t, cache.WithUpstreams(cache.Upstream{Host: "registry.test", URL: up.URL}))
	through := runConformance(t, bin, set.Cache("registry.test").Addr(), ro...)
	t.Logf("%d tags, %d manifests, %d blobs; upstream: %d passed, %d failed; through the cache: %d passed, %d failed",
		len(tags), len(manifests), len(blobs), direct.passed, direct.failed, through.passed, through.failed)
	t.Logf("failing upstream: %v; through the cache: %v", keys(direct.failures), keys(through.failures))
	for f := range through.failures {
		assert.True(t, direct.failures[f], "fails through the cache only: %s", f)
	}
	if !assert.GreaterOrEqual(t, through.passed, direct.passed) || !assert.LessOrEqual(t, through.failed, direct.failed) {
		t.Logf("through the cache:\n%s", through.output)
	}
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
