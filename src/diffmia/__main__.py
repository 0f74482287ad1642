from diffmia.cli import main

raise SystemExit(main())
