// Package dockerenv gives the project's tests a Docker Engine to work with:
// a pinged client (Client, Require), images built locally from Go packages
// with no registry involved (BuildGoImage), and the small chores a test
// does around containers (ContainerLogs, WaitExit, RemoveContainersByLabel,
// RemoveNetworksByLabel).
//
// Nothing here pulls an image: the project's machines reach no registry, so
// every image a test runs is built FROM scratch out of a static binary.
// Nothing here prints either; progress goes to the io.Writer a caller gives.
//
// scripts/docker-up starts a daemon where none runs. Require skips a test
// when no daemon answers, except under CI=true, where a missing daemon is a
// broken CI setup and fails the test instead.
package dockerenv
