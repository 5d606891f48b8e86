//go:build tools

// Package tools pins kwok, which plays the GPU nodes of the test bed.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
