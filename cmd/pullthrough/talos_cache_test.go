package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/cobra"
	"github.com/stretchr/testify/assert"
)

func TestTalosCacheTag(t *testing.T) {
	for ref, want := range map[string]string{
		"registry.k8s.io/pause:3.10":                         "3.10",
		"docker.io/library/alpine:3.20@sha256:" + zeros:      "3.20",
		"docker.io/library/alpine@sha256:" + zeros:           "",
		"127.0.0.1:5000/foo@sha256:" + zeros:                 "",
		"127.0.0.1:5000/foo:v1@sha256:" + zeros:              "v1",
		"127.0.0.1:5000/foo:v1":                              "v1",
		"ghcr.io/siderolabs/kubelet:v1.35.0@sha256:" + zeros: "v1.35.0",
		"registry.example:443/a/b/c:1.0":                     "1.0",
	} {
		imgs, err := (&listFlags{}).refs(&cobra.Command{}, []string{ref})
		if !assert.NoError(t, err, ref) {
			continue
		}
		assert.Equal(t, want, talosCacheTag(imgs[0]), ref)
	}
}

const zeros = "0000000000000000000000000000000000000000000000000000000000000000"

func TestTalosCacheDestinationIsCheckedFirst(t *testing.T) {
	dir := t.TempDir()
	assert.NoError(t, checkTalosCacheDest(filepath.Join(dir, "new")))
	assert.NoError(t, checkTalosCacheDest(dir), "an empty directory")
	file := filepath.Join(dir, "file")
	assert.NoError(t, os.WriteFile(file, []byte("x"), 0o644))
	assert.ErrorContains(t, checkTalosCacheDest(file), "not a directory")
	assert.ErrorContains(t, checkTalosCacheDest(dir), "not empty")
	b, err := os.ReadFile(file)
	assert.NoError(t, err)
	assert.Equal(t, "x", string(b), "the file is untouched")
}
