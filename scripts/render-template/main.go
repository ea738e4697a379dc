// Renders a Go template with the sprig functions, as vCluster Platform does
// for a VirtualClusterTemplate, so CI checks the real output of
// deploy/virtual-cluster-template.yaml rather than a textual stand-in.
//
// Usage: render-template VALUES_JSON MISSINGKEY < TEMPLATE > RENDERED
// MISSINGKEY is text/template's missingkey option: default or zero (Helm's).
// Built by scripts/check-manifests.sh with Debian's golang-go and
// golang-github-masterminds-sprig-dev, offline, in GOPATH mode.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/template"

	"github.com/Masterminds/sprig"
)

func main() {
	if len(os.Args) != 3 {
		fail(fmt.Errorf("usage: render-template VALUES_JSON MISSINGKEY < TEMPLATE"))
	}
	var values map[string]interface{}
	if err := json.Unmarshal([]byte(os.Args[1]), &values); err != nil {
		fail(fmt.Errorf("values: %w", err))
	}
	text, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	tpl, err := template.New("template").Funcs(sprig.TxtFuncMap()).
		Option("missingkey=" + os.Args[2]).Parse(string(text))
	if err != nil {
		fail(err)
	}
	if err := tpl.Execute(os.Stdout, map[string]interface{}{"Values": values}); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "render-template:", err)
	os.Exit(1)
}
