#!/usr/bin/env node
import '../dist/src/cli/scoreflow.js';
