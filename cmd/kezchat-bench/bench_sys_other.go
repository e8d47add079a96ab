//go:build !linux

package main

import (
	"errors"
	"os/exec"
	"time"
)

func setChildDeathSignal(*exec.Cmd) {}

func openFileLimit() (uint64, bool) { return 0, false }

func processCPUTime(int) (time.Duration, error) {
	return 0, errors.New("reading a process's CPU time needs Linux's /proc")
}

func processRSSKiB(int) (int64, error) {
	return 0, errors.New("reading a process's memory needs Linux's /proc")
}
