from heaper_trio.cli import main

raise SystemExit(main())
