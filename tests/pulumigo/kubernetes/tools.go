//go:build tools

// The Kubernetes resource provider's main package (cmd/pulumi-resource-kubernetes) embeds a
// schema generated at build time, so tests/pulumibed.py copies it out of the module cache
// into a build directory beside this go.mod, generates, then builds. These imports keep
// go.mod/go.sum complete for that.
package tools

import (
	_ "github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/provider"
	_ "github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version"
	_ "github.com/pulumi/pulumi/pkg/v3/codegen/schema"
)
