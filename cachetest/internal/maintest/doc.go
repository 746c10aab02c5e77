// Package maintest is a test suite that uses cachetest.Main the way a user's
// suite does: its TestMain starts local upstreams and the caches, and its
// tests reach the running set with cachetest.Get.
package maintest
