#!/usr/bin/env node
import '../dist/src/cli/worker.js';
