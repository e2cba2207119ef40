#!/usr/bin/env node
import '../dist/src/cli/coordinator.js';
